"""Differential test of LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and STATUS=SIZE
(RFC 8438), and of subscriptions (RFC 3501 6.3.6: names kept through DELETE and RENAME, listed
by LSUB and as \\NonExistent by LIST (SUBSCRIBED)) against Dovecot IMAP (issue 17): the same
mailbox tree (created, deleted, subscribed and unsubscribed by the same commands on both
servers) and the same messages (INBOX over POP3, the others by APPEND), then every
selection/return option combination below is sent to both and the answers compared. Dovecot
lists in its own order, so answers are compared as sets of
entries (a LIST line with the STATUS line that follows it).

Not compared: special-use attributes (Dovecot's test config declares none; checked on the
gateway alone below), STATUS RECENT and UIDVALIDITY (server-specific), INBOX's UNSEEN (Dovecot's
POP3 RETR sets \\Seen on its copies), and names left behind by deleting a parent (Dovecot's
maildir++ keeps a deleted parent of children as a mailbox, and keeps its subscription; the
gateway lists it \\NonExistent: checked on the gateway alone below).
"""

from __future__ import annotations

import imaplib
import itertools

import trio
from gateway_mime import wire

from .conftest import message
from .test_condstore import Raw

SETUP = [
    b"CREATE Archive/2024", b"CREATE Archive/2025", b"CREATE Work/Old", b"CREATE x/y/z",
    b"CREATE Lists/ietf/quic", b"CREATE Lists/python",
    b"UNSUBSCRIBE Archive", b"UNSUBSCRIBE Archive/2025", b"UNSUBSCRIBE Drafts", b"UNSUBSCRIBE Junk",
    b"UNSUBSCRIBE Work/Old", b"UNSUBSCRIBE Lists/python", b"UNSUBSCRIBE x/y/z",
    b"UNSUBSCRIBE Lists",
    # subscriptions are names (RFC 3501 6.3.6): DELETE and RENAME leave them, CREATE adds none
    b"CREATE Gone", b"DELETE Gone", b"CREATE Old", b"RENAME Old New", b"CREATE Fresh",
    b"UNSUBSCRIBE Fresh", b"DELETE Fresh", b"CREATE Fresh",
]
APPENDS = {"Archive/2024": 3, "Work": 1, "Lists/ietf/quic": 2}
COMMANDS = [
    b'LSUB "" "*"',
    b'LSUB "" "%"',
    b'LSUB "" "Lists/%"',
    b'LIST (SUBSCRIBED) "" "*"',
    b'LIST (SUBSCRIBED) "" "%"',
    b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"',
    b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Lists/%"',
    b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"',
    b'LIST (SUBSCRIBED REMOTE) "" "*"',
    b'LIST () "" "%"',
    b'LIST () "" "*"',
    b'LIST (REMOTE) "" "*"',
    b'LIST "" ("Archive" "Work/*" "x/%")',
    b'LIST "" ("%" "*/%")',
    b'LIST "Archive/" "%"',
    b'LIST "" "%" RETURN ()',
    b'LIST "" "*" RETURN (CHILDREN)',
    b'LIST "" "%" RETURN (SUBSCRIBED)',
    b'LIST "" "*" RETURN (SUBSCRIBED CHILDREN)',
    b'LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN)',
    b'LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT SIZE))',
    b'LIST "" ("Archive/*" "Work" "Lists/*") RETURN (STATUS (MESSAGES UNSEEN SIZE))',
    b'LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN STATUS (MESSAGES))',
    b'LIST "" "nothing-here" RETURN (STATUS (MESSAGES))',
    b'STATUS INBOX (MESSAGES SIZE)',
    b'STATUS Archive/2024 (SIZE UNSEEN MESSAGES UIDNEXT)',
]

_tags = itertools.count(1)


def _run(client: imaplib.IMAP4, command: bytes, ok: bool = True) -> list[bytes]:
    tag = b"l%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    if ok:
        assert replies[-1].startswith(tag + b" OK"), (command, replies[-1])
    return replies[:-1]


def _status(line: bytes) -> bytes:
    """A STATUS line with its items in one order (servers may answer in any order)."""
    head, _, items = line.rstrip().rpartition(b" (")
    pairs = items.rstrip(b")").split()
    ordered = sorted(zip(pairs[::2], pairs[1::2], strict=True))
    return head + b" (" + b" ".join(b"%s %s" % pair for pair in ordered) + b")"


def _entries(lines: list[bytes]) -> list[bytes]:
    """LIST lines, each joined with the STATUS lines after it; sorted."""
    out: list[bytes] = []
    lines = [_status(line) if line.startswith(b"* STATUS") else line for line in lines]
    for line in lines:
        if line.startswith(b"* STATUS") and out and out[-1].startswith(b"* LIST"):
            out[-1] += b" | " + line.rstrip()
        elif line.startswith((b"* LIST", b"* LSUB", b"* STATUS")):
            out.append(line.rstrip())
    return sorted(out)


async def test_list_extended_and_list_status_answer_like_dovecot(gateway):
    for n in range(4):
        gateway.deliver(message(n, body="x" * (n * 100)))
    dovecot = gateway.dovecot

    def compare() -> list[str]:
        ours = gateway.imaplib()
        theirs = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
        theirs.login(gateway.user, gateway.password)
        _run(theirs, b"SUBSCRIBE INBOX")
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):   # the gateway's defaults
            _run(theirs, b"CREATE " + name.encode())
            _run(theirs, b"SUBSCRIBE " + name.encode())
        for command in SETUP:
            _run(ours, command)
            if not command.startswith(b"CREATE"):
                _run(theirs, command)
                continue
            # the gateway creates the parents too (RFC 3501 6.3.3 SHOULD); Dovecot does not: do
            # it for it. Neither subscribes what it creates: subscribe the whole path on both
            parts = command.split()[1].split(b"/")
            for depth in range(1, len(parts) + 1):
                name = b"/".join(parts[:depth])
                _run(theirs, b"CREATE " + name, ok=False)   # NO for those that exist
                for client in (ours, theirs):
                    _run(client, b"SUBSCRIBE " + name)
        for folder, count in APPENDS.items():
            for n in range(count):
                raw = message(100 + n, body="y" * (n * 333))
                for client in (ours, theirs):
                    client.append(folder, "(\\Seen)" if n == 0 else None, None, raw)
        caps = ours.capabilities
        for cap in ("LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE"):
            assert cap in caps, cap
        bad = []
        try:
            for command in COMMANDS:
                want, got = _entries(_run(theirs, command)), _entries(_run(ours, command))
                if want != got:
                    bad.append(f"{command.decode()}\n  dovecot {want}\n  gateway {got}")
        finally:
            ours.logout()
            theirs.logout()
        return bad

    bad = await trio.to_thread.run_sync(compare)
    assert not bad, f"{len(bad)} of {len(COMMANDS)} differ:\n" + "\n".join(bad)


async def test_special_use_selection_and_return_option(gateway):
    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        assert a.cmd('LIST (SPECIAL-USE) "" "*"')[0] == [
            b'* LIST (\\Archive) "/" Archive', b'* LIST (\\Drafts) "/" Drafts',
            b'* LIST (\\Junk) "/" Junk', b'* LIST (\\Sent) "/" Sent', b'* LIST (\\Trash) "/" Trash']
        a.cmd("CREATE Other")
        lines = a.cmd('LIST "" "%" RETURN (SPECIAL-USE)')[0]
        assert b'* LIST () "/" Other' in lines and b'* LIST (\\Sent) "/" Sent' in lines, lines
        a.cmd("CREATE p/q/r")
        a.cmd("SUBSCRIBE p/q/r")
        a.cmd("DELETE p/q")   # RFC 5258 3: a name implied by its child is \NonExistent
        assert a.cmd('LIST "" "p/*" RETURN (CHILDREN)')[0] == [
            b'* LIST (\\NonExistent \\HasChildren) "/" p/q', b'* LIST (\\HasNoChildren) "/" p/q/r']
        assert a.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "p/%"')[0] == [
            b'* LIST (\\NonExistent) "/" p/q (CHILDINFO ("SUBSCRIBED"))']
        for bad in ('LIST (RECURSIVEMATCH) "" "*"', 'LIST (FOO) "" "*"', 'LIST "" "*" RETURN (FOO)',
                    'LIST "" "*" RETURN (STATUS)', 'LIST "" "*" RETURN (STATUS (FOO))',
                    'LIST "" () RETURN ()', 'LIST "" "*" FOO ()'):
            lines, done = a.cmd(bad)
            assert (lines, done.split()[1]) == ([], b"BAD"), (bad, lines, done)
        a.close()

    await trio.to_thread.run_sync(scenario)
