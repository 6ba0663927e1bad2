"""Fair use of a pooled store between accounts: one account's burst must not take every database
connection of the process and stall the sessions of everyone else.

Theory of operation: the gateway runs each logged-in session under `acting_for(account_id)`, a
context variable, so every task the session starts inherits it. A store with a connection pool
(PostgreSQL) passes each call through `AccountShares.slot()` before its pool limiter: a call
made for an account first takes one of that account's `per_account` tokens. An account therefore
holds at most `per_account` connections, whatever its number of sessions, and its further calls
wait in its own FIFO queue, never in front of another account's (the pool's limiter is FIFO).
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


class _Share:
    """One account's tokens in use, and its FIFO queue (made when it first has to wait)."""

    __slots__ = ("held", "queue")

    def __init__(self) -> None:
        self.held = 0
        self.queue: trio.lowlevel.ParkingLot | None = None


class AccountShares:
    """Per-account shares of `per_account` tokens, created and dropped on demand. A trio
    CapacityLimiter per account would do the same at about three times the CPU per call
    (a scheduler trip, its statistics object); this is its acquire/release logic for the one
    case needed: a free token is taken at once, a released one is handed to the first waiter."""

    def __init__(self, per_account: int):
        if per_account < 1:
            raise ValueError("per_account must be at least 1")
        self.per_account = per_account
        self._shares: dict[int, _Share] = {}

    def __len__(self) -> int:
        return len(self._shares)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the current account's tokens for the block (no account: nothing)."""
        account = _ACCOUNT.get()
        if account is None:
            yield
            return
        share = self._shares.get(account)
        if share is None:
            share = self._shares[account] = _Share()
        try:
            if share.held < self.per_account and not share.queue:
                share.held += 1
            else:   # FIFO; a token released meanwhile is handed over by `unpark` (held unchanged)
                if share.queue is None:
                    share.queue = trio.lowlevel.ParkingLot()
                await share.queue.park()
            try:
                yield
            finally:
                if share.queue:
                    share.queue.unpark()   # the token passes to the first waiter
                else:
                    share.held -= 1
        finally:
            if share.held == 0 and not share.queue and self._shares.get(account) is share:
                del self._shares[account]
