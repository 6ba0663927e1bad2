"""Many sessions on one account (issue 8): changes reach the others after NOOP and live in IDLE;
new upstream mail reaches an IDLE session; a restart keeps UIDVALIDITY, UIDs, flags, folders."""

from __future__ import annotations

import imaplib

import trio

from .conftest import message

run = trio.to_thread.run_sync


def _assert_relogin_bye(session: imaplib.IMAP4) -> None:
    """The session's next command gets Dovecot's BYE for a selected mailbox gone, not a reply."""
    try:
        session.noop()
    except imaplib.IMAP4.abort:
        assert session.untagged_responses["BYE"] == [
            b"IMAP session state is inconsistent, please relogin."]
    else:
        raise AssertionError("no BYE")


async def test_store_seen_after_noop_and_expunge_deferred(gateway):
    for n in range(3):
        gateway.deliver(message(n))

    def clients():
        a, b = gateway.imapclient(), gateway.imapclient()
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        a.add_flags([2], [b"\\Flagged"])
        responses = b.noop()[1]
        assert (2, b"FETCH", (b"UID", 2, b"FLAGS", (b"\\Flagged",))) in responses or any(
            r[0] == 2 and r[1] == b"FETCH" and b"\\Flagged" in r[2][3] for r in responses), responses
        a.delete_messages([1])
        a.expunge()
        # RFC 3501 7.4.1: no EXPUNGE for b during FETCH (UID FETCH may have one)
        b.use_uid = False
        fetched = b.fetch([3], ["FLAGS"])
        assert 3 in fetched
        responses = b.noop()[1]
        assert (1, b"EXPUNGE") in responses, responses
        assert b.search(["ALL"]) == [1, 2]
        b.use_uid = True
        assert b.search(["ALL"]) == [2, 3]
        # new message via APPEND in a: EXISTS in b
        a.append("INBOX", message(9))
        responses = b.noop()[1]
        assert (3, b"EXISTS") in responses, responses
        a.logout()
        b.logout()
    await run(clients)


async def test_idle_push_from_other_session_and_upstream(gateway):
    gateway.deliver(message(0))

    def clients():
        a, b = gateway.imapclient(), gateway.imapclient()
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        b.idle()
        # pushed, not polled: nothing but the hub tells an IDLE session of another session's
        # STORE (the gateway never re-reads flags on a timer). The bounds only catch a hang:
        # idle_check returns with the first response, and no wall-clock threshold is asserted
        # (a loaded CI machine is slow, never wrong).
        a.add_flags([1], [b"\\Seen"])
        got = b.idle_check(timeout=30)
        assert any(r[1] == b"FETCH" and b"\\Seen" in r[2][3] for r in got), got
        gateway.deliver(message(1))   # upstream POP3; the fetcher's poll interval is 1 s
        got = b.idle_check(timeout=30)
        assert (2, b"EXISTS") in got, got
        b.idle_done()
        assert b.search(["ALL"]) == [1, 2]
        a.logout()
        b.logout()
    await run(clients)


async def test_restart_keeps_uidvalidity_uids_flags_folders(gateway):
    for n in range(3):
        gateway.deliver(message(n))

    def before():
        c = gateway.imapclient()
        info = c.select_folder("INBOX")
        c.add_flags([2], [b"\\Answered", b"$Work"])
        c.delete_messages([1])
        c.expunge()
        c.create_folder("Projects/2024")
        c.logout()
        return info[b"UIDVALIDITY"]

    uidvalidity = await run(before)
    await gateway.restart()

    def after():
        c = gateway.imapclient()
        info = c.select_folder("INBOX")
        assert info[b"UIDVALIDITY"] == uidvalidity
        flags = c.get_flags(c.search(["ALL"]))
        assert sorted(flags) == [2, 3]   # UID 1 stays expunged, not re-fetched from POP3
        assert set(flags[2]) == {b"\\Answered", b"$Work"}
        assert "Projects/2024" in [n for _, _, n in c.list_folders()]
        c.logout()
    await run(after)


async def test_three_sessions_converge(gateway):
    for n in range(6):
        gateway.deliver(message(n))

    def clients():
        sessions = [gateway.imapclient() for _ in range(3)]
        for s in sessions:
            s.select_folder("INBOX")
        sessions[0].add_flags([1, 2], [b"\\Seen"])
        sessions[1].move([3], "Archive")
        sessions[2].add_flags([4], [b"\\Deleted"])
        sessions[2].expunge()
        views = []
        for s in sessions:
            s.noop()
            views.append(_no_recent(s.get_flags(s.search(["ALL"]))))
        fresh = gateway.imapclient()
        fresh.select_folder("INBOX")
        truth = _no_recent(fresh.get_flags(fresh.search(["ALL"])))
        assert all(v == truth for v in views), (views, truth)
        for s in sessions + [fresh]:
            s.logout()
    await run(clients)


def _no_recent(flags: dict) -> dict:
    """\\Recent is per session (only the first SELECT gets it); compare the rest."""
    return {uid: set(f) - {b"\\Recent"} for uid, f in flags.items()}


async def test_selected_mailbox_deleted_or_renamed_by_another_session(gateway):
    """As Dovecot 2.3.19 (checked against it): a session whose selected mailbox another session
    deletes or renames gets `* BYE IMAP session state is inconsistent, please relogin.` at its
    next command, instead of a tagged reply. The renaming session keeps its own selection."""
    def clients():
        a = gateway.imaplib()
        for box in ("Work", "Old", "Old/Sub"):
            assert a.create(box)[0] == "OK"
        a.append("Old/Sub", None, None, message(1))
        for selected, command in (("Work", lambda: a.delete("Work")),
                                  ("Old/Sub", lambda: a.rename("Old", "New"))):   # a parent
            b = gateway.imaplib()
            assert b.select(selected)[0] == "OK"
            assert command()[0] == "OK"
            _assert_relogin_bye(b)
        assert a.select("New/Sub")[0] == "OK"
        assert a.rename("New/Sub", "Mine")[0] == "OK"
        assert a.noop()[0] == "OK"                  # its own rename: still selected
        typ, data = a.fetch("1", "(BODY.PEEK[TEXT])")
        assert typ == "OK" and data[0][1] == b"body of message 1\r\n"
        a.logout()
    await run(clients)


async def test_selected_mailbox_deleted_after_a_message_arrived_there(gateway):
    """Another session appends to the selected mailbox, then deletes it: the next command's
    updates have a new message to claim \\Recent for in a mailbox the store no longer has. The
    session gets the BYE above; before, the store's MailboxNotFound escaped the session (the
    wide stress mix: a session_crash in production, every session of the tests' in-process
    gateway ended)."""
    def clients():
        a, b = gateway.imaplib(), gateway.imaplib()
        assert a.create("Scratch")[0] == "OK"
        assert b.select("Scratch")[0] == "OK"
        assert a.append("Scratch", None, None, message(1))[0] == "OK"
        assert a.delete("Scratch")[0] == "OK"
        _assert_relogin_bye(b)
        assert a.noop()[0] == "OK"   # the other sessions are served as before
        a.logout()
    await run(clients)


def _delete_selected(port: int, user: str, password: str, select: bytes) -> list[bytes]:
    """SELECT (or EXAMINE) a new mailbox holding one message, DELETE it in the same session and
    read everything the server sends until it closes: tagged lines cut to tag and status."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        replies = sock.makefile("rb")
        replies.readline()                                   # greeting

        def command(line: bytes) -> None:
            sock.sendall(line + b"\r\n")
            tag = line.split(b" ", 1)[0] + b" "
            while not (reply := replies.readline()).startswith(tag):
                assert reply, line
            assert reply.startswith(tag + b"OK"), (line, reply)

        command(b'a LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        command(b"b CREATE Doomed")
        command(b"c APPEND Doomed {%d+}\r\n%s" % (len(message(1)), message(1)))
        command(b"d " + select + b" Doomed")
        sock.sendall(b"e DELETE Doomed\r\n")
        rest = replies.read().split(b"\r\n")                 # until the server closes
    return [b" ".join(line.split(b" ")[:2]) if line.startswith(b"e ") else line for line in rest]


async def test_deleting_the_selected_mailbox_answers_like_dovecot(gateway):
    """Issue 15: DELETE of the session's own selected (or examined) mailbox is completed with OK,
    then `* BYE Selected mailbox was deleted, have to disconnect.` and the connection closes, on
    both stores exactly as Dovecot 2.3.19 (run here as the reference) does."""
    dovecot = gateway.dovecot
    user, password = dovecot.add_user()
    for select in (b"SELECT", b"EXAMINE"):
        theirs = await run(_delete_selected, dovecot.imap_port, user, password, select)
        ours = await run(_delete_selected, gateway.port, gateway.user, gateway.password, select)
        assert theirs == [b"e OK", b"* BYE Selected mailbox was deleted, have to disconnect.", b""]
        assert ours == theirs, select

    def still_serving():
        c = gateway.imaplib()
        assert c.select("Doomed")[0] == "NO"                 # deleted, not just deselected
        assert c.select("INBOX")[0] == "OK"
        c.logout()
    await run(still_serving)
