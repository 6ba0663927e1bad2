"""The relay engine runs the process at `relay.gil_switch_interval` (proxy/relay/engine_gil.py):
its thread shares the GIL with trio's, and a relayed command's steps wait for it up to the
interval while trio's thread is busy (bench/README.md, "login storm"). The setting is validated
and follows a reload; the process's own interval comes back when the engine's trio run ends."""

from __future__ import annotations

import sys

import pytest
import trio

from proxy import config as config_mod
from proxy.config import GIL_SWITCH_INTERVAL, Relay
from proxy.relay.engine_entry import engine
from support.configs import ONE_IMAP_RELAY

BASE = ONE_IMAP_RELAY


def us(seconds: float) -> float:
    """In whole microseconds, as CPython keeps the interval."""
    return round(seconds, 6)


def run_engine(process_interval: float, *configured: float) -> list[float]:
    """Start an engine in a trio run with the process at `process_interval`; the interval
    after the start and after each configured value (as each session's `engine(relay)` does),
    then the process's after the run. The process's interval is put back after."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(process_interval)
    try:
        async def main() -> list[float]:
            seen = []
            made = engine(Relay())
            made._start()
            seen.append(us(sys.getswitchinterval()))
            for value in configured:
                assert engine(Relay(gil_switch_interval=value)) is made
                seen.append(us(sys.getswitchinterval()))
            return seen

        seen = trio.run(main)
        return [*seen, us(sys.getswitchinterval())]
    finally:
        sys.setswitchinterval(before)


def test_the_engine_lowers_cpythons_default_switch_interval_and_restores_it():
    assert GIL_SWITCH_INTERVAL == 0.0002
    assert run_engine(0.005) == [0.0002, 0.005]


def test_the_engine_keeps_a_lower_switch_interval():
    assert run_engine(0.0001) == [0.0001, 0.0001]   # (read back as 99.99... us: kept at 100)


def test_a_reload_applies_the_new_interval_never_above_the_processs_own():
    assert run_engine(0.005, 0.001, 0.00005, 0.004) == [0.0002, 0.001, 0.00005, 0.004, 0.005]
    assert run_engine(0.003, 0.005, 0.001) == [0.0002, 0.003, 0.001, 0.003]


def test_an_engine_not_started_leaves_the_interval_alone():
    before = sys.getswitchinterval()

    async def main() -> float:
        engine(Relay(gil_switch_interval=0.001))
        return sys.getswitchinterval()

    assert trio.run(main) == before


@pytest.mark.parametrize(("written", "seconds"), [
    ("0.2ms", 0.0002), ("1ms", 0.001), ("5ms", 0.005), ("0.01ms", 0.00001), ("0.004", 0.004)])
def test_the_setting_reads_a_duration(written: str, seconds: float):
    config = config_mod.loads(BASE + f"relay: {{gil_switch_interval: {written}}}\n")
    assert config.relay.gil_switch_interval == pytest.approx(seconds)
    assert config_mod.loads(BASE).relay.gil_switch_interval == GIL_SWITCH_INTERVAL


@pytest.mark.parametrize("written", ["0", "6ms", "1s", "0.001ms", "fast", "-1ms"])
def test_the_setting_outside_10us_to_5ms_is_refused(written: str):
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE + f"relay:\n  gil_switch_interval: {written}\n")
    assert len(caught.value.errors) == 1
    error = caught.value.errors[0]
    assert error.startswith("line 8: relay.gil_switch_interval: "), error
    if written not in ("fast", "-1ms"):
        assert error.endswith("expected 0.01ms to 5ms (CPython's default is 5ms)"), error
