"""session/serve.py OpenSessions: the drain's wait for no open session is woken by the last
session's end, also when it ends in the relay engine's thread (engine_accept.py)."""

from __future__ import annotations

import trio
import trio.testing

from proxy.session.serve import OpenSessions
from support.polling import TIMEOUT


async def test_wait_none_is_woken_by_the_last_discard_from_another_thread():
    sessions = OpenSessions()
    first, last = object(), object()
    sessions.add(first)   # type: ignore[arg-type]
    sessions.add(last)    # type: ignore[arg-type]
    done = trio.Event()

    async def drain() -> None:
        await sessions.wait_none()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(sessions.discard, first)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and len(sessions) == 1
        await trio.to_thread.run_sync(sessions.discard, last)
        with trio.fail_after(TIMEOUT):   # (a bound, not a measurement: woken through the token)
            await done.wait()
    assert len(sessions) == 0


async def test_wait_none_returns_at_once_when_none_is_open():
    with trio.fail_after(TIMEOUT):
        await OpenSessions().wait_none()
