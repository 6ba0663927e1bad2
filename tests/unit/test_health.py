"""proxy.health: readiness and the upstream checker against tiny real servers on loopback."""

from __future__ import annotations

import logging
import socket
import ssl
from functools import partial

import pytest
import trio
import trustme

from proxy import health as health_mod
from proxy.config import Config, ServicePort, Upstream
from proxy.health import Health, check_round, check_upstreams
from proxy.metrics import Metrics
from support.polling import wait_until

IMAP_OK = b"* OK ready\r\n"
POP3_OK = b"+OK POP3 ready\r\n"
BYE = b"* BYE too busy\r\n"
PREAUTH = b"* PREAUTH welcome back\r\n"


class FakeUpstream:
    """A TCP server that sends `greeting` (None: nothing) and, if `hold`, waits for the client
    to leave; without `hold` it closes at once."""

    def __init__(self, greeting: bytes | None, ssl_context: ssl.SSLContext | None = None,
                 hold: bool = True):
        self.greeting = greeting
        self.ssl_context = ssl_context
        self.hold = hold
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> FakeUpstream:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                await stream.do_handshake()
            if self.greeting is not None:
                await stream.send_all(self.greeting)
            if self.hold:
                with trio.move_on_after(10):
                    await stream.receive_some(1)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def upstream(imap: int | None = None, pop3: int | None = None, tls: str = "none",
             **options) -> Upstream:
    return Upstream(host="127.0.0.1",
                    imap=None if imap is None else ServicePort(imap, tls),
                    pop3=None if pop3 is None else ServicePort(pop3, tls), **options)


def make_config(**upstreams: Upstream) -> Config:
    return Config(listeners=(), upstreams=upstreams, routes=())


def up_gauge(metrics: Metrics, name: str, protocol: str) -> float | None:
    return metrics.registry.get_sample_value("mailproxy_upstream_up",
                                             {"upstream": name, "protocol": protocol})


@pytest.fixture
def events():
    """`upstream_health` log records as (upstream, protocol, up) tuples."""
    seen: list[tuple[str, str, bool]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "upstream_health":
                fields = record.fields  # type: ignore[attr-defined]
                seen.append((fields["upstream"], fields["protocol"], fields["up"]))

    logger = logging.getLogger("mailproxy")
    handler, old_level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_greetings_decide_up_and_down(nursery):
    imap = await FakeUpstream(IMAP_OK).start(nursery)
    pop3 = await FakeUpstream(POP3_OK).start(nursery)
    bye = await FakeUpstream(BYE).start(nursery)
    preauth = await FakeUpstream(PREAUTH).start(nursery)
    hang_up = await FakeUpstream(None, hold=False).start(nursery)
    config = make_config(
        imap=upstream(imap=imap.port),
        pop3=upstream(pop3=pop3.port),
        bye=upstream(imap=bye.port),
        preauth=upstream(imap=preauth.port),
        closed=upstream(imap=closed_port(), pop3=closed_port()),
        empty=upstream(imap=hang_up.port),
        crossed=upstream(imap=pop3.port, pop3=imap.port),  # each speaks the other protocol
        mixed=upstream(imap=bye.port, pop3=pop3.port),
    )
    health, metrics = Health(listeners_bound=True), Metrics()
    await check_round(config, health, metrics)
    assert health.upstream_ok == {"imap": True, "pop3": True, "bye": False, "preauth": False,
                                  "closed": False, "empty": False, "crossed": False,
                                  "mixed": True}
    assert up_gauge(metrics, "imap", "imap") == 1
    assert up_gauge(metrics, "pop3", "pop3") == 1
    assert up_gauge(metrics, "bye", "imap") == 0
    assert up_gauge(metrics, "closed", "pop3") == 0
    assert up_gauge(metrics, "mixed", "imap") == 0
    assert up_gauge(metrics, "mixed", "pop3") == 1
    assert up_gauge(metrics, "imap", "pop3") is None  # no such service configured
    assert health.ready
    reasons = {name: await health_mod.check_service(up, "imap", up.imap)
               for name, up in config.upstreams.items() if up.imap is not None}
    assert reasons["imap"] is None
    assert reasons["bye"] == "greeting: * BYE too busy"
    assert reasons["closed"].startswith("connect: ")
    assert reasons["empty"] == "closed before greeting"


async def test_transitions_gauges_and_readiness(nursery, events):
    flappy = await FakeUpstream(IMAP_OK).start(nursery)
    config = make_config(flappy=upstream(imap=flappy.port), dead=upstream(pop3=closed_port()))
    health, metrics = Health(listeners_bound=True), Metrics()
    assert not health.ready  # nothing checked yet

    await check_round(config, health, metrics)
    assert health.ready
    assert health.upstream_ok == {"flappy": True, "dead": False}
    assert sorted(events) == [("dead", "pop3", False), ("flappy", "imap", True)]

    flappy.greeting = BYE
    await check_round(config, health, metrics)
    assert not health.ready
    assert health.not_ready_reason == "no upstream reachable"
    assert up_gauge(metrics, "flappy", "imap") == 0
    assert events[2:] == [("flappy", "imap", False)]

    await check_round(config, health, metrics)  # no change: nothing logged
    assert len(events) == 3

    flappy.greeting = IMAP_OK
    await check_round(config, health, metrics)
    assert health.ready
    assert up_gauge(metrics, "flappy", "imap") == 1
    assert events[3:] == [("flappy", "imap", True)]


async def test_silent_upstream_times_out(nursery, monkeypatch):
    monkeypatch.setattr(health_mod, "CHECK_TIMEOUT", 0.2)
    silent = await FakeUpstream(None).start(nursery)
    reason = await health_mod.check_service(upstream(imap=silent.port), "imap",
                                            ServicePort(silent.port))
    assert reason == "timeout"


async def test_loop_checks_before_started_and_keeps_checking(nursery, events):
    server = await FakeUpstream(POP3_OK).start(nursery)
    config = make_config(a=upstream(pop3=server.port, health_check_interval=0.05),
                         b=upstream(pop3=closed_port(), health_check_interval=60))
    health, metrics = Health(listeners_bound=True), Metrics()
    await nursery.start(check_upstreams, config, health, metrics)
    assert health.upstream_ok == {"a": True, "b": False}  # first round done before started()

    server.greeting = b"-ERR maintenance\r\n"
    await wait_until(lambda: not health.ready, "the failing upstream to make /readyz false")
    assert up_gauge(metrics, "a", "pop3") == 0
    server.greeting = POP3_OK
    await wait_until(lambda: health.ready, "the recovered upstream to make /readyz true")
    assert [e for e in events if e[0] == "a"] == [("a", "pop3", True), ("a", "pop3", False),
                                                  ("a", "pop3", True)]


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("imap.example.test").configure_cert(context)
    return context


async def test_implicit_tls_verifies_the_upstream(nursery, ca, tmp_path):
    # The default CHECK_TIMEOUT: a TLS handshake on a loaded machine must not make a good
    # upstream look down (the plain-to-TLS case, which can only time out, is tested below).
    server = await FakeUpstream(IMAP_OK, _server_context(ca)).start(nursery)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config = make_config(
        good=upstream(imap=server.port, tls="implicit", ca_file=ca_file,
                      server_name="imap.example.test"),
        wrong_name=upstream(imap=server.port, tls="implicit", ca_file=ca_file),
        untrusted=upstream(imap=server.port, tls="implicit", server_name="imap.example.test"),
        unverified=upstream(imap=server.port, tls="implicit", verify=False),
    )
    health = Health()
    await check_round(config, health, Metrics())
    assert health.upstream_ok == {"good": True, "wrong_name": False, "untrusted": False,
                                  "unverified": True}
    reason = await health_mod.check_service(config.upstreams["untrusted"], "imap",
                                            config.upstreams["untrusted"].imap)
    assert reason is not None and reason.startswith("tls: ")


async def test_plain_check_of_a_tls_upstream_fails(nursery, ca, monkeypatch):
    # A plain client waits for a greeting that a TLS server never sends: only the timer ends it.
    monkeypatch.setattr(health_mod, "CHECK_TIMEOUT", 0.5)
    server = await FakeUpstream(IMAP_OK, _server_context(ca)).start(nursery)
    config = make_config(plain_to_tls=upstream(imap=server.port))
    health = Health()
    await check_round(config, health, Metrics())
    assert health.upstream_ok == {"plain_to_tls": False}


def test_readiness_rules():
    health = Health()
    assert health.alive and not health.ready
    assert health.not_ready_reason == "listeners not bound"
    health.listeners_bound = True
    assert health.not_ready_reason == "no upstream reachable"
    health.upstream_ok = {"a": False}
    assert not health.ready
    health.upstream_ok = {"a": False, "b": True}
    assert health.ready
    health.draining = True
    assert (health.ready, health.not_ready_reason) == (False, "draining")


def test_publish_exports_draining():
    health, metrics = Health(), Metrics()
    health.publish(metrics)
    assert metrics.registry.get_sample_value("mailproxy_draining") == 0
    health.draining = True
    assert metrics.registry.get_sample_value("mailproxy_draining") == 1
