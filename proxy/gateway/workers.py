"""Worker threads for the gateway's CPU work, on limiters of its own.

`trio.to_thread.run_sync` without a limiter takes a thread under trio's process-wide default
limiter (40 threads), which every other user of threads shares: the TLS context a gateway login
builds for its POP3 upstream (`session.upstream.built_context`), directory lookups, the
proxy's own start-up work. One account's storm of SORTs or SEARCHes over big mailboxes could
hold all 40, and another user's login would wait for a thread. So the gateway's CPU work takes
its threads from two limiters of its own (`gateway.limits`):

* `commands` (`command_threads`): what IMAP commands compute off the event loop: SORT and
  THREAD items, SEARCH over headers, MIME analysis of big bodies (FETCH, APPEND), BINARY
  decoding, PREVIEW, sort fields of bodies stored without them;
* `ingest` (`ingest_threads`): new mail's analysis and long POP3 UIDL/LIST listings, so a
  command storm does not hold back new mail, and a big download does not hold back commands.

Work past a limiter's size waits for a thread of that limiter only; trio's default limiter,
and with it the TLS set-up, stays free.

Between accounts: a job made for an account (the gateway runs each session and each account's
sync under `store.acting_for`) first takes one of that account's shares of the limiter, half
its threads (at least one), FIFO per account (`store.fairness.AccountShares`). One account's
storm of SORTs therefore holds at most half the threads, and another account's PREVIEW or
APPEND analysis gets a thread at once instead of queueing behind the whole storm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import trio

from ..store.fairness import AccountShares

__all__ = ["Workers", "COMMAND_THREADS", "INGEST_THREADS", "per_account_share"]

COMMAND_THREADS = 4   # gateway.limits.command_threads: the GIL runs one at a time anyway
INGEST_THREADS = 2    # gateway.limits.ingest_threads

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Workers:
    """The gateway's two thread limiters and each account's share of them (module docstring)."""

    commands: trio.CapacityLimiter
    ingest: trio.CapacityLimiter
    command_shares: AccountShares
    ingest_shares: AccountShares

    @classmethod
    def build(cls, command_threads: int = COMMAND_THREADS,
              ingest_threads: int = INGEST_THREADS) -> Workers:
        return cls(trio.CapacityLimiter(command_threads), trio.CapacityLimiter(ingest_threads),
                   AccountShares(per_account_share(command_threads)),
                   AccountShares(per_account_share(ingest_threads)))

    async def command(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a thread of the `commands` limiter, within the account's share."""
        async with self.command_shares.slot():
            return await trio.to_thread.run_sync(function, *args, limiter=self.commands)

    async def ingested(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a thread of the `ingest` limiter, within the account's share."""
        async with self.ingest_shares.slot():
            return await trio.to_thread.run_sync(function, *args, limiter=self.ingest)


def per_account_share(threads: int) -> int:
    """Threads of a limiter one account may hold at once: half of them, at least one."""
    return max(1, threads // 2)
