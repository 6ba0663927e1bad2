"""MailboxIndex.forget (a DELETE, this process's or another's) against a refresh of the same
mailbox still in flight: the snapshot it then makes is not kept (a deleted mailbox's snapshot,
a few MB for 10,000 messages, stayed for the life of the process). A small fake store for this
one layer; the order of events is forced, never a duration."""

from __future__ import annotations

import trio

from proxy.gateway.imapd._index import MailboxIndex


class _SlowStore:
    """`messages` waits until released: a refresh held inside the store."""

    def __init__(self) -> None:
        self.entered, self.release = trio.Event(), trio.Event()

    async def messages(self, mailbox_id: int) -> list:
        self.entered.set()
        await self.release.wait()
        return []


async def test_a_refresh_in_flight_keeps_nothing_once_its_mailbox_is_forgotten():
    index, store = MailboxIndex(), _SlowStore()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(index.snapshot_at, store, 7, 1)
        await store.entered.wait()
        index.forget(7)   # the DELETE, while the refresh waits in the store
        store.release.set()
    assert 7 not in index


async def test_a_refresh_after_forget_is_kept_as_ever():
    index, store = MailboxIndex(), _SlowStore()
    store.release.set()
    index.forget(7)
    await index.snapshot_at(store, 7, 1)
    assert 7 in index
