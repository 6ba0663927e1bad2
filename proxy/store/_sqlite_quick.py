"""How the SQLite store's calls reach its one connection: a worker thread, or the trio thread.

Theory of operation: one `sqlite3` connection, used one call at a time, so SQLite never sees two
statements at once. Calls run in a worker thread (`trio.to_thread.run_sync` behind a
`CapacityLimiter(1)`; calls that arrive while it is busy run together in one hand-off), except
*quick* calls (`_quick`: a few rows, a small body, bounded work of well under a millisecond):
when the worker is idle they run at once in the trio thread. On a loaded machine a thread
hand-off costs milliseconds of scheduling, many times the query (issues 13 and 15: SELECT,
STORE, APPEND). A quick call must never wait in the trio thread, so the connection's default
is `busy_timeout=0` and no automatic WAL checkpoint (its fsync); a quick call that meets
another process's lock (SQLITE_BUSY: nothing was done) is retried in the worker, whose batches
run with `busy_timeout` and automatic checkpoints on, and every `CHECKPOINT_EVERY` quick calls
one checkpoint runs in the worker.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Callable, TypeVar, TypeVarTuple

import outcome
import trio

from ._schema import BUSY_TIMEOUT_MS
from .base import StoreError, StoreFailure

__all__ = ["QuickCalls", "CHECKPOINT_EVERY"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Call:
    """One store call queued for the worker thread; `result` is set there."""

    __slots__ = ("fn", "result")

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.result: outcome.Outcome[Any] | None = None


CHECKPOINT_EVERY = 1000   # quick calls between two WAL checkpoints (run in the worker)
WAL_AUTOCHECKPOINT = 1000  # pages; SQLite's default, on only while the worker runs a batch

# Connection settings while a quick call may run (the default) and while the worker runs a batch
_QUICK_MODE = "PRAGMA busy_timeout=0", "PRAGMA wal_autocheckpoint=0"
_WORKER_MODE = f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}", f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}"


def _set_mode(db: sqlite3.Connection, pragmas: tuple[str, str]) -> None:
    for pragma in pragmas:
        db.execute(pragma)


def _run_batch(db: sqlite3.Connection, calls: list[_Call]) -> None:
    """In the worker thread: each call in order, each outcome kept (one failing call does not
    stop the others)."""
    _set_mode(db, _WORKER_MODE)
    try:
        for call in calls:
            call.result = outcome.capture(call.fn)
    finally:
        _set_mode(db, _QUICK_MODE)


def _busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class QuickCalls:
    """The connection of `SqliteStore` and its two ways in: `_run` (the worker thread) and
    `_quick` (see the module docstring)."""

    def __init__(self, db: sqlite3.Connection, path: str):
        self._db = db
        self.path = path
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._queue: list[_Call] = []          # calls waiting for the worker (see `_run`)
        self._draining = False
        self._batch_done = trio.Event()
        self._quick_calls = 0                  # since the last checkpoint
        _set_mode(db, _QUICK_MODE)

    async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run `fn(*args)` in the worker thread. Calls that arrive while the worker is busy are
        queued and run together, in order, in one hand-off (issue 13: with many sessions the
        hand-offs, not the queries, were the cost). Like `to_thread.run_sync`, a call cannot be
        cancelled once made: it runs, and its caller waits for it."""
        if self._closed:
            raise StoreError("store is closed")
        call: _Call = _Call(functools.partial(fn, *args))
        self._queue.append(call)
        with trio.CancelScope(shield=True):
            while call.result is None:
                if self._draining:
                    await self._batch_done.wait()
                    continue
                self._draining = True
                batch, self._queue = self._queue, []
                try:
                    await trio.to_thread.run_sync(_run_batch, self._db, batch,
                                                 limiter=self._limiter)
                except BaseException as exc:   # the hand-off itself failed: every call fails
                    for queued in batch:
                        if queued.result is None:
                            queued.result = outcome.Error(exc)
                    raise
                finally:
                    self._draining = False
                    done, self._batch_done = self._batch_done, trio.Event()
                    done.set()
        result = call.result
        assert result is not None   # the loop above ends only when it is set
        try:
            value: T = result.unwrap()
            return value
        except sqlite3.Error as exc:  # disk full, locked too long...: a refusal, not a crash
            raise StoreFailure(f"store {self.path}: {exc}") from exc

    async def _quick(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """`_run` for a call whose work is small and bounded (the callers check sizes, e.g.
        `INLINE_ROWS`): at once in the trio thread when the worker is idle (see the module
        docstring), else queued behind the worker's calls, in order."""
        if self._closed:
            raise StoreError("store is closed")
        if self._draining or self._queue:
            return await self._run(fn, *args)
        try:
            value = fn(*args)
        except sqlite3.Error as exc:
            if _busy(exc):   # another process holds the lock; nothing was done: wait in the worker
                return await self._run(fn, *args)
            raise StoreFailure(f"store {self.path}: {exc}") from exc
        self._quick_calls += 1
        if self._quick_calls >= CHECKPOINT_EVERY:
            self._quick_calls = 0
            await self._run(self._checkpoint)
        await trio.lowlevel.cancel_shielded_checkpoint()   # a schedule point; the call is done
        return value

    def _checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
