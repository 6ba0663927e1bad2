"""A SELECT that fails after its view subscribed to the hub (the snapshot's store call, say)
leaves nothing selected (RFC 3501 6.3.1): the session is in the authenticated state, and the
hub does not wait for that view to load before it collects another session's expunged bodies
(hub.py: bodies are deferred while a view of the mailbox is loading)."""

from __future__ import annotations

import trio

from proxy.gateway.imapd._index import MailboxIndex
from proxy.store import StoreUnavailable

from .conftest import message
from .test_views import Client, _append

run = trio.to_thread.run_sync


async def test_failed_select_leaves_nothing_selected_and_defers_no_body(gateway, monkeypatch):
    store = gateway.service.store
    collected: list[list[int]] = []
    real_collect = type(store).collect_bodies

    async def collect_bodies(self, ids):
        collected.append(sorted(ids))
        return await real_collect(self, ids)

    async def unavailable(self, store, *args):
        raise StoreUnavailable("the database is restarting")

    def scenario():
        a, b = Client(gateway), Client(gateway)   # both have INBOX selected
        _append(a, message(1))
        _append(a, message(2))
        b.ok("NOOP")
        monkeypatch.setattr(MailboxIndex, "snapshot", unavailable)
        monkeypatch.setattr(MailboxIndex, "latest", unavailable)
        lines, done = b.cmd("SELECT INBOX")
        assert done.split(b" ")[1:3] == [b"NO", b"[UNAVAILABLE]"], (lines, done)
        monkeypatch.undo()
        lines, done = b.cmd("FETCH 1 (UID)")
        assert (lines, done.split(b" ", 1)[1]) == \
            ([], b"BAD Command not valid in the authenticated state."), (lines, done)
        monkeypatch.setattr(type(store), "collect_bodies", collect_bodies)
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert a.ok("EXPUNGE") == [b"* 1 EXPUNGE"]
        assert a.ok("NOOP") == []   # (commands run one by one: the EXPUNGE's collect is over)
        # b shows nothing: the body was collected after the EXPUNGE's reply, not deferred
        assert len(collected) == 1 and len(collected[0]) == 1, collected
        b.ok("SELECT INBOX")   # and a later SELECT works as ever
        assert b.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)"]
        for client in (a, b):
            client.close()

    await run(scenario)
