"""The process's garbage collector set-up (`gc:`, proxy/collector.py): start-up freezes what is
alive then and applies the thresholds, a reload applies new thresholds, bad values are
refused with their path and line. The freeze comes before the first accept, so a session
(whose objects hold each other in cycles, and its Runtime) is never frozen, and after a reload
the start-up Runtime is freed once its last session has ended. What it is for (shorter full
collections on the gateway's loop) is measured in bench/gateway_fairness.py --gc, not here."""

from __future__ import annotations

import gc
import socket
import weakref

import pytest
import trio

from proxy import config as config_mod
from proxy.app import App
from proxy.config.operations import GC_THRESHOLDS
from support import polling
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


class ClientFirst(StartOnly):
    """A client connects as soon as the listener is bound, before start-up has finished (it
    waits in the backlog); when ready it logs out, then the config is reloaded."""

    async def _bind(self, index, listener):
        sockets = await super()._bind(index, listener)
        self.client = socket.create_connection(("127.0.0.1", listener.address.port))
        return sockets

    async def _ready(self) -> None:
        self.at_ready = (gc.get_threshold(), gc.get_freeze_count())

        def log_out() -> bytes:
            with self.client as client, client.makefile("rb") as answers:
                greeting = answers.readline()
                client.sendall(b"a LOGOUT\r\n")
                assert answers.readline() == b"* BYE Logging out.\r\n"
                assert answers.readline() == b"a OK Logout completed.\r\n"
                return greeting

        assert (await trio.to_thread.run_sync(log_out)).startswith(b"* OK ")
        await polling.wait_until(lambda: not self.open_sessions, "the session ended")
        self.start_up = weakref.ref(self.runtime)
        assert self.apply(self.runtime.config) == []
        frozen = gc.get_freeze_count()

        def start_up_runtime_freed() -> bool:
            gc.collect()
            return self.start_up() is None

        # the relay engine keeps an ended session's timer entry until it comes due (`login`)
        await polling.wait_until(start_up_runtime_freed, "the start-up Runtime freed")
        self.frozen_after_reload = frozen, gc.get_freeze_count()


async def test_a_session_is_never_frozen_and_a_reload_frees_the_start_up_runtime(
        collector_restored):
    gc.unfreeze()
    port = free_ports(1)[0]
    text = BASE.replace("address: 127.0.0.1:{port}}", "address: 127.0.0.1:{port}, "
                        "timeouts: {{login: 1s}}}").format(port=port)
    app = ClientFirst(config_mod.loads(text), None)
    await app.run()
    assert app.at_ready[1] > 0
    before, after = app.frozen_after_reload
    assert after < before   # the start-up Runtime's frozen objects, freed (a reload never freezes)


@pytest.mark.parametrize(("written", "errors"), [
    ("[99, 10, 10]", ["line 8: gc.thresholds[0]: expected 100 to 10000000"]),
    ("[700, 0, 10001]", ["line 8: gc.thresholds[1]: expected 1 to 10000",
                         "line 8: gc.thresholds[2]: expected 1 to 10000"]),
])
def test_thresholds_out_of_range_are_refused(written: str, errors: list[str]):
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE.format(port=1143) + f"gc:\n  thresholds: {written}\n")
    assert caught.value.errors == errors
