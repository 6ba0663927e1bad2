"""Every command in every state, with imaplib and imapclient against the gateway (Dovecot POP3
upstream), including NO/BAD and their response codes."""

from __future__ import annotations

import imaplib

import imapclient
import pytest
import trio

from .conftest import message

run = trio.to_thread.run_sync


def raw(client: imaplib.IMAP4, line: bytes) -> list[bytes]:
    """Send one tagged command, return every line up to and including the tagged reply."""
    tag = client._new_tag()
    client.send(tag + b" " + line + b"\r\n")
    lines = []
    while True:
        got = client.readline()
        lines.append(got)
        if got.startswith(tag + b" "):
            return lines


async def test_not_authenticated_state(gateway):
    def client():
        c = gateway.imaplib(login=False)
        assert b"IMAP4rev1" in raw(c, b"CAPABILITY")[0]
        assert raw(c, b"NOOP")[-1].split()[1] == b"OK"
        assert raw(c, b"SELECT INBOX")[-1].split()[1] == b"BAD"
        assert b"[AUTHENTICATIONFAILED]" in raw(c, b"LOGIN " + gateway.user.encode() + b" wrong")[-1]
        c.login(gateway.user, gateway.password)
        assert b"BAD" in raw(c, b"LOGIN a b")[-1]
        c.logout()
        ic = gateway.imapclient(login=False)
        ic.plain_login(gateway.user, gateway.password)   # AUTHENTICATE PLAIN (SASL-IR)
        assert ic.list_folders()
        ic.logout()
    await run(client)


async def test_authenticated_state(gateway):
    def client():
        c = gateway.imapclient()
        caps = c.capabilities()
        for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"SPECIAL-USE", b"CHILDREN",
                    b"ESEARCH", b"UNSELECT", b"ENABLE", b"LITERAL+", b"ID"):
            assert cap in caps
        assert c.namespace().personal == (("", "/"),)
        assert b"mailproxy" in c.id_({"name": "test"})[0]
        folders = {name: flags for flags, _, name in c.list_folders()}
        assert set(folders) >= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
        assert b"\\Sent" in folders["Sent"] and b"\\HasNoChildren" in folders["Sent"]
        c.create_folder("Entwürfe/Sub")   # modified UTF-7 both ways, parent created
        folders = {name: flags for flags, _, name in c.list_folders()}
        assert b"\\HasChildren" in folders["Entwürfe"] and "Entwürfe/Sub" in folders
        assert [n for _, _, n in c.list_folders("", "Entw%")] == ["Entwürfe"]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
            c.create_folder("Entwürfe/Sub")
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
            c.create_folder("inbox")
        c.rename_folder("Entwürfe", "Drafts2")
        assert "Drafts2/Sub" in [n for _, _, n in c.list_folders()]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
            c.rename_folder("Nope", "Nope2")
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
            c.rename_folder("Drafts2", "Sent")
        c.subscribe_folder("Drafts2/Sub")
        assert "Drafts2/Sub" in [n for _, _, n in c.list_sub_folders()]
        c.unsubscribe_folder("Drafts2/Sub")
        assert "Drafts2/Sub" not in [n for _, _, n in c.list_sub_folders()]
        c.delete_folder("Drafts2/Sub")
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
            c.delete_folder("Drafts2/Sub")
        with pytest.raises(imapclient.exceptions.IMAPClientError):
            c.delete_folder("INBOX")
        uid = c.append("Sent", message(7), flags=[b"\\Seen", b"$Label"], msg_time=None)
        assert b"APPENDUID" in uid
        status = c.folder_status("Sent", [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"RECENT"])
        assert status[b"MESSAGES"] == 1 and status[b"UNSEEN"] == 0 and status[b"UIDNEXT"] == 2
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="TRYCREATE"):
            c.append("Nope", message(8))
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
            c.select_folder("Nope")
        assert c._imap.enable("CONDSTORE")[0] == "OK" if hasattr(c._imap, "enable") else True
        c.logout()
    await run(client)


async def test_selected_state(gateway):
    for n in range(5):
        gateway.deliver(message(n, body=f"needle{n} caf\u00e9" if n == 3 else None))

    def client():
        c = gateway.imapclient()
        c.use_uid = False   # sequence numbers here; UID commands are sent raw
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 5 and info[b"READ-WRITE"] and info[b"UIDNEXT"] == 6
        assert info[b"UIDVALIDITY"] > 0 and b"\\*" in info[b"PERMANENTFLAGS"]
        data = c.fetch([1, 2, 3, 4, 5], ["FLAGS", "RFC822.SIZE", "ENVELOPE", "INTERNALDATE", "BODYSTRUCTURE"])
        assert sorted(data) == [1, 2, 3, 4, 5]
        assert data[2][b"ENVELOPE"].subject == b"message 1"
        part = c.fetch([2], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.9>", "BODY.PEEK[TEXT]"])
        assert part[2][b"BODY[HEADER.FIELDS (SUBJECT)]<0>"] == b"Subject: "
        assert part[2][b"BODY[TEXT]"] == b"body of message 1\r\n"
        assert b"\\Seen" not in c.get_flags([2])[2]
        c.fetch([2], ["BODY[]"])   # 6.4.5: BODY[] sets \Seen
        assert b"\\Seen" in c.get_flags([2])[2]
        c.add_flags([1], [b"\\Flagged", b"custom"])
        assert set(c.get_flags([1])[1]) >= {b"\\Flagged", b"custom"}
        c.remove_flags([1], [b"custom"])
        assert c.search(["FLAGGED"]) == [1]
        assert c.search(["TEXT", "needle3"]) == [4]
        assert c.search(["BODY", "café"], charset="UTF-8") == [4]
        assert c.search(["SUBJECT", "message 4"]) == [5]
        assert c.search(["NOT", "SEEN"]) == [1, 3, 4, 5]
        assert c.search(["OR", "FLAGGED", "SEEN"]) == [1, 2]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="BADCHARSET"):
            c.search(["TEXT", "x"], charset="KOI8-R")
        with pytest.raises(imapclient.exceptions.IMAPClientError):
            c.search(["BOGUS"])
        lines = raw(c._imap, b"UID SEARCH RETURN (MIN MAX COUNT ALL) ALL")
        assert lines[0].startswith(b'* ESEARCH (TAG "') and b"UID MIN 1 MAX 5 COUNT 5 ALL 1:5" in lines[0]
        assert b"BAD" in raw(c._imap, b"FETCH 9 FLAGS")[-1]
        assert b"BAD" in raw(c._imap, b"FETCH 1 (FOO)")[-1]
        assert b"BAD" in raw(c._imap, b"STORE 1 +FLAGS (\\Bogus)")[-1]
        copied = c.copy([1, 2], "Archive")
        assert copied and b"COPYUID" in raw(c._imap, b"UID COPY 3 Archive")[-1]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="TRYCREATE"):
            c.copy([1], "Nope")
        lines = raw(c._imap, b"MOVE 5 Trash")
        assert b"[COPYUID" in lines[0] and lines[1] == b"* 5 EXPUNGE\r\n" and b"OK" in lines[2]
        assert c.search(["ALL"]) == [1, 2, 3, 4]
        c.add_flags([1, 2], [b"\\Deleted"])
        assert raw(c._imap, b"UID EXPUNGE 1")[0] == b"* 1 EXPUNGE\r\n"  # UIDPLUS: UID 1 only
        assert c.search(["ALL"]) == [1, 2, 3]
        assert raw(c._imap, b"EXPUNGE")[0] == b"* 1 EXPUNGE\r\n"  # the former UID 2
        c.unselect_folder()
        assert b"BAD" in raw(c._imap, b"FETCH 1 FLAGS")[-1]
        info = c.select_folder("Archive", readonly=True)
        assert info[b"EXISTS"] == 3 and info[b"READ-ONLY"]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="READ-ONLY"):
            c.add_flags([1], [b"\\Seen"])
        c.fetch([1], ["BODY[]"])   # read-only: \Seen not set
        assert b"\\Seen" not in c.get_flags([1])[1]
        c.close_folder()
        c.select_folder("Archive")
        c.add_flags([1], [b"\\Deleted"])
        c.close_folder()   # silent expunge
        assert c.folder_status("Archive", [b"MESSAGES"])[b"MESSAGES"] == 2
        c.noop()
        c.logout()
    await run(client)


async def test_imaplib_literal_append_and_idle_done(gateway):
    def client():
        c = gateway.imaplib()
        typ, data = c.append("Drafts", "(\\Draft)", imaplib.Time2Internaldate(1700000000),
                             message(1))
        assert typ == "OK" and b"APPENDUID" in data[0]
        c.select("Drafts")
        typ, data = c.fetch("1", "(FLAGS INTERNALDATE)")
        assert b"\\Draft" in data[0] and b"INTERNALDATE" in data[0]
        typ, data = c.uid("SEARCH", None, "ALL")
        assert data == [b"1"]
        tag = c._new_tag()
        c.send(tag + b" IDLE\r\n")
        assert c.readline().startswith(b"+")
        c.send(b"DONE\r\n")
        assert c.readline().startswith(tag + b" OK")
        c.logout()
    await run(client)
