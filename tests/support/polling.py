"""Bounded polling on a real condition: the one sanctioned way for a test to wait for something
it cannot be told about (a log line written by another process, a metric, a file, a health
flag flipped by a background task).

Never sleep a fixed time and hope: wait for the condition itself, with a bound that only a
broken build reaches, and fail with a message saying what never happened. Prefer an event
(`trio.Event`, `threading.Event`) when the code under test can set one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

TIMEOUT = 60.0    # seconds: a bound only a broken build reaches, even on a 2-core machine at load 20
INTERVAL = 0.01


def poll(predicate: Callable[[], T], timeout: float, *, interval: float = INTERVAL) -> T:
    """Call `predicate` until it returns a true value or `timeout` seconds have passed; returns
    its last value (false on timeout). For the waits that go on either way (SIGKILL after a
    bounded wait for an exit); a test waiting for what must happen uses `wait_for`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(predicate: Callable[[], T], what: str, *, timeout: float = TIMEOUT,
             interval: float = INTERVAL) -> T:
    """Call `predicate` until it returns a true value, which is returned. After `timeout`
    seconds fail with AssertionError naming `what` never happened."""
    value = poll(predicate, timeout, interval=interval)
    if not value:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value


async def wait_until(predicate: Callable[[], T], what: str, *, interval: float = INTERVAL) -> T:
    """`wait_for` inside trio: the other tasks run while this one polls. Bounded by TIMEOUT; for a
    tighter bound put the call in the caller's own `trio.fail_after` (trio style: timeouts are
    cancel scopes at the call site)."""
    with trio.move_on_after(TIMEOUT):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {TIMEOUT} s waiting for {what}")
