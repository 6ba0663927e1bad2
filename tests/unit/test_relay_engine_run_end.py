"""The relay engine's descriptors end with its trio run (proxy/relay/engine.py): its thread
leaves the loop when the run ends and closes its epoll and its eventfd. Before, the eventfd was
never closed: one descriptor leaked per trio run (per test that started a proxy in-process)."""

from __future__ import annotations

import os
import pathlib

import trio

from proxy.relay.engine import Engine

RUNS = 3


def descriptors() -> dict[int, str]:
    """This process's open descriptors and what each is (e.g. 'anon_inode:[eventfd]')."""
    found = {}
    for entry in pathlib.Path("/proc/self/fd").iterdir():
        try:
            found[int(entry.name)] = os.readlink(entry)
        except FileNotFoundError:   # (the directory's own descriptor, closed by now)
            pass
    return found


def run_an_engine() -> tuple[Engine, int, list[str]]:
    """A trio run that starts an engine; (the engine, its eventfd, what the run saw open)."""
    async def main() -> tuple[Engine, int, list[str]]:
        made = Engine()
        made._start()
        return made, made._wakefd, sorted(descriptors().values())

    return trio.run(main)


def test_each_run_closes_its_engines_epoll_and_eventfd():
    before = descriptors()
    for _ in range(RUNS):
        made, wakefd, during = run_an_engine()
        assert "anon_inode:[eventfd]" in during and "anon_inode:[eventpoll]" in during
        assert made.thread is not None
        made.thread.join(timeout=30)   # (the thread closes them when it sees the run's end)
        assert not made.thread.is_alive()
        assert made._epoll.closed
        assert wakefd not in descriptors() or descriptors()[wakefd] != "anon_inode:[eventfd]"
    assert descriptors() == before
