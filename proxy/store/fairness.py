"""Fair use of a pooled store between accounts: one account's burst must not take every database
connection of the process and stall the sessions of everyone else.

Theory of operation: the gateway runs each logged-in session under `acting_for(account_id)`, a
context variable, so every task the session starts inherits it. A store with a connection pool
(PostgreSQL) passes each call through `AccountShares.slot()` before its pool limiter: a call
made for an account first takes one of that account's `per_account` tokens. An account therefore
holds at most `per_account` connections, whatever its number of sessions, and since trio's
limiters are FIFO its queued calls wait in its own queue, never in front of another account's.
Calls made for no account (login, the change feed, fetch leases, maintenance) take the pool's
limiter only. Limiters exist only while an account has calls in flight or waiting, so their
number is bounded by the calls, not by the accounts ever seen.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import AsyncIterator, Iterator

import trio

__all__ = ["acting_for", "AccountShares"]

_ACCOUNT: ContextVar[int | None] = ContextVar("mailproxy_store_account", default=None)


@contextmanager
def acting_for(account_id: int) -> Iterator[None]:
    """Store calls made in this block (and by tasks started in it) are `account_id`'s."""
    token = _ACCOUNT.set(account_id)
    try:
        yield
    finally:
        _ACCOUNT.reset(token)


class AccountShares:
    """Per-account CapacityLimiters of `per_account` tokens, created and dropped on demand."""

    def __init__(self, per_account: int):
        if per_account < 1:
            raise ValueError("per_account must be at least 1")
        self.per_account = per_account
        self._limiters: dict[int, trio.CapacityLimiter] = {}

    def __len__(self) -> int:
        return len(self._limiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the current account's tokens for the block (no account: nothing)."""
        account = _ACCOUNT.get()
        if account is None:
            yield
            return
        limiter = self._limiters.get(account)
        if limiter is None:
            limiter = self._limiters[account] = trio.CapacityLimiter(self.per_account)
        try:
            async with limiter:
                yield
        finally:
            stats = limiter.statistics()
            if stats.borrowed_tokens == 0 and stats.tasks_waiting == 0:
                self._limiters.pop(account, None)
