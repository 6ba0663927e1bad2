"""proxy.net.http against a real HTTP client (urllib in a thread) and raw sockets on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
import trio

from proxy.config import Address
from proxy.health import Health
from proxy.metrics import Metrics
from proxy.net import http
from support.polling import TIMEOUT


@dataclass
class Server:
    port: int
    metrics: Metrics
    health: Health

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Reply:
    status: int
    headers: object
    body: bytes


@pytest.fixture
async def server(nursery) -> Server:
    metrics, health = Metrics(), Health()
    port = await nursery.start(http.serve_http, Address("127.0.0.1", 0), metrics, health)
    return Server(port, metrics, health)


async def fetch(url: str, method: str = "GET", headers: dict | None = None,
                data: bytes | None = None) -> Reply:
    def run() -> Reply:
        request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, error.headers, error.read())

    return await trio.to_thread.run_sync(run)


async def raw(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and return everything the server sends until it closes."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def test_metrics_text_format(server):
    server.metrics.connections.labels("imap", "imap", "none").inc()
    reply = await fetch(server.url + "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert reply.headers["Connection"] == "close"
    assert b'mailproxy_connections_total{listener="imap",protocol="imap",tls="none"} 1.0' in reply.body
    assert b"mailproxy_build_info{" in reply.body


async def test_metrics_openmetrics_when_asked(server):
    reply = await fetch(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")


async def test_metrics_with_a_malformed_accept_header(server):
    reply = await fetch(server.url + "/metrics",
                        headers={"Accept": "application/openmetrics-text; version=x.y"})
    assert reply.status == 200


async def test_head_has_headers_without_body(server):
    reply = await fetch(server.url + "/metrics", method="HEAD")
    assert reply.status == 200
    assert int(reply.headers["Content-Length"]) > 0
    assert reply.body == b""


async def test_healthz(server):
    reply = await fetch(server.url + "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")


async def test_readyz_follows_health(server):
    health = server.health
    reply = await fetch(server.url + "/readyz")
    assert (reply.status, reply.body) == (503, b"listeners not bound\n")
    health.listeners_bound = True
    reply = await fetch(server.url + "/readyz")
    assert (reply.status, reply.body) == (503, b"no upstream reachable\n")
    health.upstream_ok = {"a": False, "b": True}
    reply = await fetch(server.url + "/readyz?verbose=1")
    assert (reply.status, reply.body) == (200, b"ready\n")
    health.draining = True
    reply = await fetch(server.url + "/readyz")
    assert (reply.status, reply.body) == (503, b"draining\n")


async def test_readyz_local_ignores_upstreams(server):
    health = server.health
    reply = await fetch(server.url + "/readyz/local")
    assert (reply.status, reply.body) == (503, b"listeners not bound\n")
    health.listeners_bound = True
    health.upstream_ok = {"a": False}
    assert (await fetch(server.url + "/readyz")).status == 503
    reply = await fetch(server.url + "/readyz/local")
    assert (reply.status, reply.body) == (200, b"ready\n")
    health.draining = True
    reply = await fetch(server.url + "/readyz/local")
    assert (reply.status, reply.body) == (503, b"draining\n")


async def test_unknown_path_is_404(server):
    assert (await fetch(server.url + "/nope")).status == 404
    assert (await fetch(server.url + "/metrics/")).status == 404


async def test_other_methods_are_405(server):
    reply = await fetch(server.url + "/metrics", method="POST", data=b"x" * 100_000)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"
    assert (await fetch(server.url + "/healthz", method="DELETE")).status == 405


async def test_oversized_request_is_refused_and_server_keeps_serving(server):
    request = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    reply = await raw(server.port, request)
    assert reply.startswith(b"HTTP/1.1 431 ") or reply == b""
    assert (await fetch(server.url + "/healthz")).status == 200


@pytest.mark.parametrize("request_bytes, status", [
    (b"garbage\r\n\r\n", b"400"),
    (b"GET /healthz\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (b"GET healthz HTTP/1.1\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"400"),          # half-closed mid-head
    (b"GET http://example.org/healthz HTTP/1.1\r\n\r\n", b"200"),
    (b"GET /healthz HTTP/1.0\n\n", b"200"),
    (b"BREW /healthz HTTP/1.1\r\n\r\n", b"405"),
])
async def test_malformed_requests(server, request_bytes, status):
    if request_bytes.endswith(b"Host: x\r\n"):
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(request_bytes)
            await stream.send_eof()
            reply = await stream.receive_some(4096)
    else:
        reply = await raw(server.port, request_bytes)
    assert reply.split(b" ")[1] == status
    assert (await fetch(server.url + "/healthz")).status == 200


async def test_silent_and_vanishing_clients(server, monkeypatch):
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.2)
    assert await raw(server.port, b"") == b""           # sends nothing: closed after the timeout
    assert await raw(server.port, b"GET /metr") == b""  # stalls mid-request: closed as well
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.aclose()                                 # connects and leaves at once
    assert (await fetch(server.url + "/healthz")).status == 200


async def test_reports_the_bound_port(nursery):
    port = await nursery.start(http.serve_http, Address("127.0.0.1", 0), Metrics(), Health())
    assert port > 0
    with pytest.raises(OSError):
        await nursery.start(http.serve_http, Address("127.0.0.1", port), Metrics(), Health())
