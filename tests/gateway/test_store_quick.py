"""SQLite store: quick calls (small, bounded work) run in the trio thread when the worker is
idle (issues 13 and 15: a thread hand-off cost more than the query). They must never wait there:
a quick call that meets another process's write lock is retried in the worker, and the loop
goes on meanwhile; WAL checkpoints (an fsync) run in the worker."""

from __future__ import annotations

import sqlite3
import threading

import trio
import trio.testing

from proxy.store import FlagMode, _sqlite_quick, open_store

MESSAGE = b"Subject: quick\r\n\r\nbody\r\n"


async def test_quick_call_meeting_another_process_lock_waits_in_the_worker(tmp_path):
    path = str(tmp_path / "s.db")
    store = await open_store(path)
    account = await store.ensure_account("up", "u")
    inbox = await store.get_mailbox(account.id, "INBOX")
    other = sqlite3.connect(path, isolation_level=None)   # another process's connection
    other.execute("BEGIN IMMEDIATE")                       # holds the write lock
    result: list[int] = []
    appended = trio.Event()

    async def append() -> None:
        result.append(await store.append(inbox.id, MESSAGE))   # small: a quick call
        appended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append)
        await trio.testing.wait_all_tasks_blocked()
        # The loop runs (we are here) while the append waits for the lock in the worker
        assert not appended.is_set()
        other.execute("COMMIT")
    assert result == [1]
    assert [m.uid for m in await store.messages(inbox.id)] == [1]
    # And back in quick mode: the connection waits for no lock in the trio thread
    assert store._db.execute("PRAGMA busy_timeout").fetchone() == (0,)
    other.close()
    await store.close()


async def test_wal_checkpoint_runs_in_the_worker_every_so_many_quick_calls(tmp_path, monkeypatch):
    monkeypatch.setattr(_sqlite_quick, "CHECKPOINT_EVERY", 5)
    store = await open_store(str(tmp_path / "s.db"))
    checkpoints: list[bool] = []
    real = store._checkpoint

    def checkpoint() -> None:
        checkpoints.append(threading.current_thread() is threading.main_thread())
        real()

    monkeypatch.setattr(store, "_checkpoint", checkpoint)
    account = await store.ensure_account("up", "u")
    inbox = await store.get_mailbox(account.id, "INBOX")
    uid = await store.append(inbox.id, MESSAGE)
    store._quick_calls = 0
    for _ in range(10):   # quick writes
        await store.store_flags(inbox.id, [uid], ["\\Seen"], FlagMode.ADD)
    assert checkpoints == [False, False]   # twice, never in the trio (main) thread
    await store.close()
