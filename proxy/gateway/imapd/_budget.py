"""The per-command budget: CPU-bound command work runs in short slices that yield to the event
loop, and a command that runs past its budget answers ``NO [LIMIT]``.

Theory of operation
-------------------
Every session of every account shares one trio event loop, so a command whose work grows with
its input (SEARCH with thousands of keys, FETCH of many sections, LIST over a huge tree) must
not hold the loop. Its loops call `await budget.tick()` once per unit of work (a message, a
mailbox name): when the current slice has used `SLICE` seconds, `tick()` yields
(`trio.lowlevel.checkpoint`), so every other session runs before the next slice; when the
command has run for `gateway.limits.command_budget` seconds, `tick()` raises `Reply` NO with
the RFC 5530 LIMIT code and the command stops there (nothing was changed by the read-only
loops that tick). Work that must finish once begun, such as bringing the session's view up to
date after the store committed a STORE or EXPUNGE, calls `await budget.share()` instead: it
yields the same way and never stops the command.

Why slices rather than threads: handlers are pure-Python loops over state that belongs to the
event loop (the session's view); in a thread they would hold the GIL anyway, and a thread
cannot be stopped at the budget. Work that is one long call into a library (MIME analysis of
a big APPEND, ingest) runs in `trio.to_thread` instead; it is bounded by `MimeLimits`.
"""

from __future__ import annotations

import time

import trio

from ._args import Reply

__all__ = ["CommandBudget", "SLICE", "DEFAULT_COMMAND_BUDGET"]

SLICE = 0.01   # seconds of work between two yields to the event loop
DEFAULT_COMMAND_BUDGET = 60.0   # gateway.limits.command_budget


class CommandBudget:
    """One command's time allowance; `start()` at each command, `tick()` in its loops."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = self.slice_end = 0.0

    def start(self) -> None:
        now = time.monotonic()
        self.deadline = now + self.seconds
        self.slice_end = now + SLICE

    async def tick(self) -> None:
        now = time.monotonic()
        if now < self.slice_end:
            return
        if now >= self.deadline:
            raise Reply.no("Command took too long and was stopped.", b"LIMIT")
        await trio.lowlevel.checkpoint()
        self.slice_end = time.monotonic() + SLICE

    async def share(self) -> None:
        """Yield to the other sessions when this slice is used up; never stops the command."""
        if time.monotonic() >= self.slice_end:
            await trio.lowlevel.checkpoint()
            self.slice_end = time.monotonic() + SLICE
