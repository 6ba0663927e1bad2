"""The process's garbage collector set-up (`gc:`, proxy/collector.py): start-up freezes what is
alive then and applies the thresholds, a reload applies new thresholds, bad values are
refused with their path and line. What it is for (shorter full collections on the gateway's
loop) is measured in bench/gateway_fairness.py --gc, not here."""

from __future__ import annotations

import gc

import pytest

from proxy import config as config_mod
from proxy.app import App
from proxy.config.operations import GC_THRESHOLDS
from support.ports import free_ports

BASE = """\
listeners:
  - {{name: imap, protocol: imap, address: 127.0.0.1:{port}}}
upstreams:
  main: {{host: 127.0.0.1, imap: {{port: 143}}}}
routes:
  - {{match: "*", upstream: main}}
"""


@pytest.fixture
def collector_restored():
    """The test process's collector as it was, whatever the test did to it."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class StartOnly(App):
    """App.run up to ready, then straight to the drain and stop; records the collector's state
    when ready."""

    async def _ready(self) -> None:
        self.at_ready = (gc.get_threshold(), gc.get_freeze_count())

    async def _wait_for_stop(self) -> None:
        return


async def test_start_up_freezes_and_applies_the_thresholds(collector_restored):
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    app = StartOnly(config_mod.loads(BASE.format(port=free_ports(1)[0])), None)
    await app.run()
    thresholds, frozen = app.at_ready
    assert thresholds == GC_THRESHOLDS == (20_000, 20, 100)
    assert frozen > 0


async def test_no_freeze_when_told_and_a_reload_applies_new_thresholds(collector_restored):
    gc.unfreeze()
    text = BASE.format(port=free_ports(1)[0])
    app = StartOnly(config_mod.loads(text + "gc: {freeze_after_startup: false, "
                                            "thresholds: [5000, 15, 50]}\n"), None)
    await app.run()
    assert app.at_ready == ((5000, 15, 50), 0)
    assert app.apply(config_mod.loads(text + "gc: {thresholds: [700, 10, 10]}\n")) == []
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0   # a reload never freezes


@pytest.mark.parametrize(("written", "errors"), [
    ("[99, 10, 10]", ["line 8: gc.thresholds[0]: expected 100 to 10000000"]),
    ("[700, 0, 10001]", ["line 8: gc.thresholds[1]: expected 1 to 10000",
                         "line 8: gc.thresholds[2]: expected 1 to 10000"]),
])
def test_thresholds_out_of_range_are_refused(written: str, errors: list[str]):
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE.format(port=1143) + f"gc:\n  thresholds: {written}\n")
    assert caught.value.errors == errors
