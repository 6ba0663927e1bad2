"""How one PostgreSQL store call runs: one transaction on a pooled connection, bounded,
retried when that is safe, settled when its COMMIT was cut.

Theory of operation: psycopg 3 with its connection pool, used from worker threads
(`trio.to_thread.run_sync` behind a `CapacityLimiter` as large as the pool). psycopg's async API
is asyncio-only and there is no maintained trio-native PostgreSQL driver (triopg wraps asyncpg
through trio-asyncio and is unmaintained), while threads keep the trio loop free and give real
parallelism for network waits. Each store call is ONE transaction on one pooled connection,
committed when the call returns and rolled back when it raises (`_call`); a call that is one
read-only statement (`read=True`) runs in autocommit instead, one round trip without BEGIN and
COMMIT.

Fairness: a call made for an account (`fairness.acting_for`, set by the gateway for each
logged-in session) first takes one of that account's tokens (`gateway.store_pool_per_account`,
default half the pool), so one account's burst leaves connections for the others.

Failures: a deadlock or serialization failure is retried (bounded, `RETRIES`); a lost server,
a pool with no free connection within `POOL_TIMEOUT_S`, or a call not answered within
`gateway.store_query_timeout` (a frozen server: `_pg_deadline.py`) is `StoreUnavailable`, which
the gateway answers with `NO [UNAVAILABLE]`. That bound holds for the whole call: a writing
call's statements and COMMIT are cut after the first `1 - SETTLE_SHARE` of it, so that a COMMIT
cut on the wire can still be settled within the rest (`_pg_commit.py`). The pool checks a
connection before handing it out, and a call whose connection turns out dead before its COMMIT
(nothing was done) runs again on another, so after a database restart calls recover without
restarting the proxy. A call whose connection is lost DURING its COMMIT is answered by what the
server says happened (`_pg_commit.py`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import psycopg
import psycopg_pool
import trio
from psycopg import errors as pg_errors

from ._pg_commit import SETTLE_SHARE, InDoubt, commit, outcome, settle
from ._pg_deadline import Deadlines, Watch
from ._pg_schema import POOL_TIMEOUT_S, one_line
from .base import StoreError, StoreFailure, StoreUnavailable
from .fairness import AccountShares

__all__ = ["PgCalls", "default_per_account"]

RETRIES = 5                 # deadlock / serialization failure: run the transaction again
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


def default_per_account(pool_size: int) -> int:
    """Connections one account's sessions may hold at once unless configured: half the pool."""
    return max(1, pool_size // 2)


class _StaleConnection(Exception):
    """A pooled connection turned out dead before the transaction's COMMIT (`_call`)."""



class PgCalls:
    """The pool of a `PostgresStore` and the one way its calls run (see the module docstring)."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], size: int,
                 per_account: int | None, query_timeout: float):
        self._pool: psycopg_pool.ConnectionPool[Any] | None = pool
        self._limiter = trio.CapacityLimiter(size)
        self._shares = AccountShares(per_account or default_per_account(size))
        self._deadlines = Deadlines(query_timeout)

    def _call(self, read: bool, fn: Callable[..., Any], *args: Any) -> Any:
        timeout = self._deadlines.timeout_s
        end = time.monotonic() + timeout   # the whole call's bound, a cut COMMIT settled included
        # a writing call keeps the bound's last share for asking whether a cut COMMIT happened
        work = timeout if read else timeout * (1 - SETTLE_SHARE)
        try:
            with self._deadlines.call(end - timeout + work) as watch:
                try:
                    return self._attempts(watch, read, fn, *args)
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    if watch.expired:   # cut by its deadline (_pg_deadline.py): not run again
                        raise StoreUnavailable("store unavailable: no answer from the database "
                                               f"within {work:g}s") from exc
                    raise
        except InDoubt as doubt:   # lost during its COMMIT: did it happen? (_pg_commit.py)
            with self._deadlines.call(end) as again:
                ask = functools.partial(self._attempts, again, True, outcome, doubt.xid)
                return settle(doubt, ask, again)

    def _attempts(self, watch: Watch, read: bool, fn: Callable[..., Any], *args: Any) -> Any:
        for attempt in range(RETRIES):
            pool = self._pool
            if pool is None:
                raise StoreError("store is closed")
            try:
                left = watch.deadline - time.monotonic()
                with pool.connection(timeout=max(0.0, min(POOL_TIMEOUT_S, left))) as c:
                    watch.use(c)
                    try:
                        if read:
                            c.autocommit = True   # one statement: no BEGIN/COMMIT round trips
                        try:
                            result = fn(c, *args)
                        except psycopg.OperationalError as exc:
                            if c.broken and not watch.expired:   # before COMMIT: nothing done
                                raise _StaleConnection() from exc
                            raise
                        finally:
                            if read:
                                c.autocommit = False
                        return result if read else commit(c, result)
                    finally:
                        watch.use(None)
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise
            except _StaleConnection as stale:   # e.g. pooled before a database restart
                if attempt == RETRIES - 1:
                    assert stale.__cause__ is not None
                    raise stale.__cause__ from None
        raise AssertionError("unreachable")

    async def _run(self, fn: Callable[..., Any], *args: Any, read: bool = False) -> Any:
        try:
            async with self._shares.slot():   # an account's share of the pool (fairness.py)
                return await trio.to_thread.run_sync(
                    functools.partial(self._call, read, fn, *args), limiter=self._limiter)
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailable("store unavailable: no database connection") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"store unavailable: {one_line(exc)}") from exc
        except psycopg.Error as exc:   # a bug or a broken database: a refusal, not a crash
            raise StoreFailure(f"store: {one_line(exc)}") from exc
