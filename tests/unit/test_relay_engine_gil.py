"""The relay engine lowers the GIL switch interval when it starts (proxy/relay/engine.py,
SWITCH_INTERVAL): its thread shares the GIL with trio's, and a relayed command's steps wait for
it up to the interval while trio's thread is busy (bench/README.md, "login storm")."""

from __future__ import annotations

import sys

import trio

from proxy.relay.engine import SWITCH_INTERVAL, Engine


def run_engine_start(interval: float) -> float:
    """sys.getswitchinterval() once an engine started under `interval` (restored after), in
    whole microseconds (CPython keeps it as an integer count of them)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        async def main() -> float:
            Engine()._start()
            return sys.getswitchinterval()

        return round(trio.run(main), 6)
    finally:
        sys.setswitchinterval(before)


def test_the_engine_lowers_cpythons_default_switch_interval():
    assert SWITCH_INTERVAL < 0.005
    assert run_engine_start(0.005) == SWITCH_INTERVAL


def test_the_engine_keeps_a_lower_switch_interval():
    assert run_engine_start(SWITCH_INTERVAL / 2) == SWITCH_INTERVAL / 2


def test_the_engine_restores_the_interval_when_its_run_ends():
    """The lowered interval is the engine's, for the life of its trio run: CPU-bound threads
    of the process (and later runs in it, e.g. other tests) get theirs back at its end."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        async def main() -> float:
            Engine()._start()
            return sys.getswitchinterval()

        assert round(trio.run(main), 6) == SWITCH_INTERVAL
        assert round(sys.getswitchinterval(), 6) == 0.005
    finally:
        sys.setswitchinterval(before)
