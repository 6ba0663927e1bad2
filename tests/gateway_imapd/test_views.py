"""Regression tests for the shared-mailbox symptoms of issue 13, one per symptom, on the wire:

* an EXPUNGE numbered beyond what the session knows (a message that came and went unseen);
* \\Recent in two sessions, and again after a restart;
* a keyword in FETCH FLAGS that no FLAGS response announced (RFC 3501 7.2.6);
* a copied message announced after its EXPUNGE went by (kept by a session for good);
* a MOVE whose announcement in the target failed left the moved messages in the mover's view;
* NO [EXPUNGEISSUED] for a message the session still sees (RFC 2180 4.1.1: answered from the
  view), and the body forgotten by the store once every session was told.
"""

from __future__ import annotations

import itertools
import re

import trio

from proxy.gateway.imapd import _message_changes
from proxy.gateway.imapd.hub import Hub
from proxy.store import StoreUnavailable

from .conftest import message
from .stress.wire import Conn

run = trio.to_thread.run_sync


class Client:
    """(untagged responses, tagged response) per command, literals included, nothing dropped."""

    def __init__(self, gateway, select: str | None = "INBOX"):
        self.conn = Conn("127.0.0.1", gateway.port, 20)
        self.tags = (b"c%d" % n for n in itertools.count(1))
        assert self.conn.response().startswith(b"* OK")
        self.ok(f'LOGIN "{gateway.user}" "{gateway.password}"')
        self.selected = self.ok(f"SELECT {select}") if select else []

    def cmd(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        tag = next(self.tags)
        self.conn.send(tag + b" " + (text.encode() if isinstance(text, str) else text) + b"\r\n")
        lines = []
        while not (line := self.conn.response()).startswith(tag + b" "):
            lines.append(line)
        return lines, line

    def ok(self, text: str | bytes) -> list[bytes]:
        lines, done = self.cmd(text)
        assert done.split(b" ")[1] == b"OK", (text, lines, done)
        return lines

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.conn.close()


def _append(client: Client, body: bytes, flags: str = "") -> int:
    tag = next(client.tags)
    client.conn.send(tag + b" APPEND INBOX " + flags.encode() + b" {%d+}\r\n" % len(body) + body +
                     b"\r\n")
    while not (line := client.conn.response()).startswith(tag + b" "):
        pass
    return int(re.search(rb"\[APPENDUID \d+ (\d+)\]", line).group(1))


def _recent(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if b"\\Recent" in line]


async def test_message_that_came_and_went_is_never_announced(gateway):
    def scenario():
        a, b, c = Client(gateway), Client(gateway), Client(gateway)
        _append(c, message(1))
        _append(c, message(2))
        assert [line for line in b.ok("NOOP") if line.endswith(b"EXISTS")] == [b"* 2 EXISTS"]
        uid = _append(c, message(3))
        a.ok("NOOP")
        a.ok(f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
        a.ok(f"UID EXPUNGE {uid}")
        # b knew 2 messages: message 3 came and went; no "3 EXPUNGE" for a client that has 2
        noop = b.ok("NOOP")
        assert not [line for line in noop if line.endswith((b"EXPUNGE", b"EXISTS"))], noop
        assert b.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)"]
        for client in (a, b, c):
            client.close()

    await run(scenario)


async def test_copy_expunged_before_its_announcement_is_never_announced(gateway, monkeypatch):
    """A COPY reads the snapshot that announces the copy, then (held here by events) another
    session SELECTs, sees the copy and expunges it, before the COPY publishes. A session told of
    neither must not get EXISTS for it afterwards (it would keep a message the store dropped;
    the stress tester's wide mix found it: "session 4 has 9 messages, the store 8")."""
    read, publish = trio.Event(), trio.Event()

    async def paused(session, mailbox_id: int) -> None:   # Hub.announce_latest, held between
        hub = session.backend.hub
        with hub.reading(mailbox_id):
            snapshot = await session.backend.index.latest(session.store, mailbox_id)
            read.set()
            await publish.wait()
            hub.appended(mailbox_id, snapshot.metas)

    a, b, c = await run(lambda: (Client(gateway), Client(gateway), Client(gateway)))
    await run(lambda: (_append(c, message(1)), _append(c, message(2)), c.ok("NOOP"), a.ok("NOOP")))
    monkeypatch.setattr(_message_changes, "publish_appended", paused)
    copied: list[bytes] = []
    with trio.fail_after(60):   # a hang bound, not a timing assertion
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, lambda: copied.append(a.cmd("COPY 1 INBOX")[1]))
            await read.wait()

            def expunge_the_copy() -> list[bytes]:
                assert b"* 3 EXISTS" in b.ok("SELECT INBOX")
                b.ok("UID STORE 3 +FLAGS.SILENT (\\Deleted)")
                b.ok("UID EXPUNGE 3")
                return c.ok("NOOP")

            assert await run(expunge_the_copy) == []   # c never heard of UID 3
            publish.set()
    assert copied[0].endswith(b" 1 3] COPY completed."), copied
    noop = await run(c.ok, "NOOP")
    assert not [line for line in noop if line.endswith((b"EXISTS", b"EXPUNGE"))], noop
    assert await run(c.ok, "FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)"]
    for client in (a, b, c):
        await run(client.close)


async def test_move_forgets_what_moved_even_when_its_announcement_fails(gateway, monkeypatch):
    """The store committed the MOVE, then reading the target's snapshot failed (a database
    outage): the mover is still told the EXPUNGE, so its view never keeps what moved."""
    async def failing(session, mailbox_id: int) -> None:
        raise StoreUnavailable("the database is restarting")

    def scenario():
        a = Client(gateway)
        _append(a, message(1))
        _append(a, message(2))
        a.ok("NOOP")
        a.ok("CREATE Elsewhere")
        monkeypatch.setattr(_message_changes, "publish_appended", failing)
        lines, done = a.cmd("UID MOVE 1 Elsewhere")
        assert done.split(b" ")[1:3] == [b"NO", b"[UNAVAILABLE]"], done
        assert lines[-1] == b"* 1 EXPUNGE" and lines[0].startswith(b"* OK [COPYUID "), lines
        assert a.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)"]
        a.close()

    await run(scenario)


async def test_recent_in_exactly_one_session_and_not_again_after_restart(gateway):
    def first():
        a, b = Client(gateway), Client(gateway)
        writer = Client(gateway, select=None)
        for n in range(3):
            _append(writer, message(n))
        for s in (a, b):
            s.ok("NOOP")
        seen = [_recent(s.ok("FETCH 1:* (FLAGS)")) for s in (a, b)]
        # each new message is \Recent in one of the two sessions, never both
        assert sorted(len(s) for s in seen) in ([0, 3], [1, 2]) and sum(map(len, seen)) == 3, seen
        counts = [line for s in (a, b) for line in s.ok("NOOP") if line.endswith(b"RECENT")]
        assert counts == []   # told once
        fresh = Client(gateway)
        assert b"* 0 RECENT" in fresh.selected and not _recent(fresh.ok("FETCH 1:* (FLAGS)"))
        writer.ok("LOGOUT")
        for client in (a, b, fresh):
            client.close()

    await run(first)
    await gateway.restart()

    def after_restart():
        writer = Client(gateway, select=None)
        _append(writer, message(9))   # arrives while nobody has INBOX selected
        status = writer.ok("STATUS INBOX (MESSAGES RECENT)")
        assert status == [b"* STATUS INBOX (MESSAGES 4 RECENT 1)"], status
        first = Client(gateway)
        assert b"* 1 RECENT" in first.selected, first.selected
        assert _recent(first.ok("FETCH 1:* (FLAGS)")) == [b"* 4 FETCH (FLAGS (\\Recent))"]
        second = Client(gateway)
        assert b"* 0 RECENT" in second.selected, second.selected
        for client in (writer, first, second):
            client.close()

    await run(after_restart)


async def test_new_keyword_announced_before_use_in_every_session(gateway):
    def scenario():
        a, b = Client(gateway), Client(gateway)
        _append(a, message(1))
        b.ok("NOOP")
        a.ok("NOOP")
        lines = a.ok("STORE 1 +FLAGS ($Fresh)")   # the session's own STORE
        assert lines[0] == b"* FLAGS ($Fresh \\Answered \\Deleted \\Draft \\Flagged \\Seen)", lines
        assert lines[1].startswith(b"* OK [PERMANENTFLAGS ($Fresh \\* "), lines
        assert lines[2].startswith(b"* 1 FETCH (FLAGS ($Fresh")
        lines = b.ok("NOOP")   # the other session
        assert lines[0].startswith(b"* FLAGS ($Fresh "), lines
        assert [line for line in lines if b"FETCH" in line] in (
            [b"* 1 FETCH (UID 1 FLAGS ($Fresh \\Recent))"], [b"* 1 FETCH (UID 1 FLAGS ($Fresh))"]), lines
        assert not [line for line in b.ok("NOOP") if line.startswith(b"* FLAGS")]   # told once
        for client in (a, b):
            client.close()

    await run(scenario)


async def test_message_expunged_elsewhere_stays_readable_until_told(gateway):
    body = message(1, body="still here")
    a, b = await run(lambda: (Client(gateway), Client(gateway)))

    def setup():
        _append(a, body)
        _append(a, message(2))
        b.ok("NOOP")
        a.ok("NOOP")

    await run(setup)
    store = gateway.service.store
    account = await store.get_account("main", gateway.user)
    inbox = await store.get_mailbox(account.id, "INBOX")
    first = (await store.messages(inbox.id))[0]

    def expunge_elsewhere():
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert b.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted))"]
        assert a.ok("EXPUNGE") == [b"* 1 EXPUNGE"]
        # b still sees message 1: FETCH and SEARCH answer from b's view, no EXPUNGE meanwhile
        lines = b.ok("FETCH 1 (UID BODY.PEEK[] RFC822.SIZE)")
        assert lines == [b"* 1 FETCH (UID 1 BODY[] {%d}\r\n%s RFC822.SIZE %d)"
                         % (len(body), body, len(body))], lines
        assert b.ok("SEARCH BODY still") == [b"* SEARCH 1"]

    await run(expunge_elsewhere)
    assert [m.uid for m in await store.messages(inbox.id)] == [2]
    assert await store.bodies([first]) == [body]   # kept for b (not only in a cache)

    def told():
        assert b.ok("NOOP") == [b"* 1 EXPUNGE"]
        a.ok("NOOP")   # the next command of any session collects what nobody shows
        for client in (a, b):
            client.close()

    await run(told)
    assert await store.bodies([first]) == [None]   # no session shows it: forgotten


async def test_rename_inbox_expunges_what_it_moved_in_other_sessions(gateway):
    """RFC 3501 6.3.5: RENAME INBOX moves its messages; a session with INBOX selected is told
    exactly what was moved (taken from the change log, so mail ingested meanwhile is included)."""
    def scenario():
        a, b = Client(gateway), Client(gateway, select=None)
        for n in range(3):
            _append(b, message(n))
        a.ok("NOOP")
        b.ok("RENAME INBOX Old")
        assert a.ok("NOOP") == [b"* 3 EXPUNGE", b"* 2 EXPUNGE", b"* 1 EXPUNGE"]
        assert b.ok("STATUS Old (MESSAGES)") == [b"* STATUS Old (MESSAGES 3)"]
        assert b.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)"]
        for client in (a, b):
            client.close()

    await run(scenario)


async def test_qresync_after_the_change_log_was_pruned(gateway):
    """RFC 7162 3.2.5.1 when the change log no longer reaches the client's MODSEQ: VANISHED
    (EARLIER) is computed from the UIDs that exist (issue 13, pruning policy in README)."""
    def before():
        a = Client(gateway)
        for n in range(5):
            _append(a, message(n))
        lines = a.ok("NOOP") + a.ok("STATUS INBOX (HIGHESTMODSEQ UIDVALIDITY)")
        status = [line for line in lines if line.startswith(b"* STATUS")][0]
        modseq, validity = (int(x) for x in re.search(
            rb"HIGHESTMODSEQ (\d+) UIDVALIDITY (\d+)", status).groups())
        a.ok("UID STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        a.ok("UID EXPUNGE 2,4")
        a.ok("UID STORE 5 +FLAGS.SILENT (\\Flagged)")
        a.close()
        return modseq, validity

    modseq, validity = await run(before)
    store = gateway.service.store
    account = await store.get_account("main", gateway.user)
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert await store.prune_changes(inbox.id, inbox.highest_modseq) > 0

    def after():
        b = Client(gateway, select=None)
        b.ok("ENABLE QRESYNC")
        lines = b.ok(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:5))")
        assert b"* VANISHED (EARLIER) 2,4" in lines, lines
        assert [line for line in lines if b"FETCH" in line] == [
            b"* 3 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (%d))" % inbox.highest_modseq], lines
        b.close()

    await run(after)


async def test_select_again_after_the_name_changed_hands(gateway):
    """SELECT subscribes to the mailbox it last saw under a name before reading it (one store
    call); when that name now belongs to another mailbox (deleted and re-created, or renamed
    away), the new one is shown, with its own UIDVALIDITY, and changes to it reach the session."""
    def scenario():
        a, b = Client(gateway, select=None), Client(gateway, select=None)
        a.ok("CREATE Box")
        first = a.ok("SELECT Box")
        b.ok("RENAME Box Old")
        b.ok("CREATE Box")
        tag = next(b.tags)
        body = message(7)
        b.conn.send(tag + b" APPEND Box {%d+}\r\n" % len(body) + body + b"\r\n")
        while not b.conn.response().startswith(tag + b" "):
            pass
        again = a.ok("SELECT Box")
        validity = [line for line in again if b"UIDVALIDITY" in line]
        assert validity and validity != [line for line in first if b"UIDVALIDITY" in line], again
        assert b"* 1 EXISTS" in again, again
        b.ok("SELECT Box")
        b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
        assert a.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"]
        for client in (a, b):
            client.close()

    await run(scenario)


async def test_store_outage_after_the_reply_neither_crashes_nor_loses_garbage(gateway, monkeypatch):
    """A store error in what runs around a command's reply (claiming \\Recent for new mail,
    deleting the bodies of expunged messages) is not the command's: the command is answered
    OK, the session goes on, and the bodies are deleted after a later command."""
    store = gateway.service.store
    outage = {"collect_bodies": 1}
    collected: list[list[int]] = []
    real_collect = type(store).collect_bodies

    async def collect_bodies(self, ids):
        if outage["collect_bodies"]:
            outage["collect_bodies"] -= 1
            raise StoreUnavailable("the database is restarting")
        collected.append(list(ids))
        return await real_collect(self, ids)

    async def claim_recent(self, store, mailbox_id, upto):
        raise StoreUnavailable("the database is restarting")

    def scenario():
        a, writer = Client(gateway), Client(gateway, select=None)
        _append(writer, message(1))
        _append(writer, message(2))
        monkeypatch.setattr(Hub, "claim_recent", claim_recent)
        assert a.ok("NOOP") == [b"* 2 EXISTS", b"* 0 RECENT"]   # none claimed: none recent
        monkeypatch.undo()
        monkeypatch.setattr(type(store), "collect_bodies", collect_bodies)
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert a.ok("EXPUNGE") == [b"* 1 EXPUNGE"]   # its body's deletion fails after the reply
        assert a.ok("NOOP") == []   # (commands run one by one: the EXPUNGE's is over now)
        assert outage["collect_bodies"] == 0
        assert a.ok("NOOP") == []   # the NOOP's own housekeeping deleted the body
        assert len(collected) == 1 and len(collected[0]) == 1, collected
        assert a.ok("FETCH 1 (UID)") == [b"* 1 FETCH (UID 2)"]
        a.close()
        writer.close()

    await run(scenario)


async def test_deleting_a_mailbox_keeps_a_copied_body_another_session_still_shows(gateway):
    """RFC 2180 4.1.1 across mailboxes (seed 1218242009 of the wide stress mix, SQLite): the
    body of an INBOX message is shared with its COPY in another mailbox; the INBOX message is
    expunged while session b still shows it (b pins the body), then the other mailbox is
    deleted. DELETE must not delete the body b pins: b's FETCH still answers it, and the body
    goes once b has been told."""
    body = message(1, body="copied and pinned")
    a, b = await run(lambda: (Client(gateway), Client(gateway)))

    def setup():
        _append(a, body)
        b.ok("NOOP")
        a.ok("NOOP")
        a.ok("CREATE Scratch")
        a.ok("COPY 1 Scratch")

    await run(setup)
    store = gateway.service.store
    account = await store.get_account("main", gateway.user)
    inbox = await store.get_mailbox(account.id, "INBOX")
    first = (await store.messages(inbox.id))[0]

    def race():
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert b.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted))"]
        assert a.ok("EXPUNGE") == [b"* 1 EXPUNGE"]
        a.ok("DELETE Scratch")   # the last message referring to the body b still shows
        a.ok("NOOP")   # its housekeeping collects what nobody shows
        lines = b.ok("FETCH 1 (BODY.PEEK[])")
        assert lines == [b"* 1 FETCH (BODY[] {%d}\r\n%s)" % (len(body), body)], lines

    await run(race)
    assert await store.bodies([first]) == [body]

    def told():
        assert b.ok("NOOP") == [b"* 1 EXPUNGE"]
        a.ok("NOOP")
        for client in (a, b):
            client.close()

    await run(told)
    assert await store.bodies([first]) == [None]   # no session shows it: forgotten
