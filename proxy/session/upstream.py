"""Connecting to an upstream server: TCP with a timeout, then implicit TLS when configured.

Protocol dialogue (greeting, STARTTLS/STLS, login) lives in imap_upstream.py / pop3_upstream.py;
this module only opens the byte stream and classifies what went wrong (proxy.failures.Failure),
which picks the client's reply, the log level and the metric label.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import trio

from .. import logs
from ..config import ServicePort, Upstream
from .failures import LOG_LEVEL, Failure
from ..net.conn import Conn
from ..net.tls import TLSHandshakeError, client_handshake
from .context import Session


class UpstreamError(Exception):
    """The upstream could not be used. `detail` is safe to log, never shown to the client."""

    def __init__(self, failure: Failure, detail: str):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


async def _connect(host: str, port: int) -> trio.SocketStream:
    """TCP to host:port. An IP address connects directly (trio.open_tcp_stream's resolver and
    happy-eyeballs machinery cost more than the connect itself on loopback)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)  # sets TCP_NODELAY


def service(upstream: Upstream, protocol: str) -> ServicePort:
    port = upstream.imap if protocol == "imap" else upstream.pop3
    assert port is not None, "config validation guarantees the section exists"
    return port


async def open_upstream(session: Session, name: str, upstream: Upstream, protocol: str) -> Conn:
    """TCP (and implicit TLS) to the upstream's `protocol` service. Raises UpstreamError."""
    svc = service(upstream, protocol)
    timeout = session.listener.timeouts.upstream_connect
    metrics = session.runtime.metrics
    started = time.monotonic()
    try:
        with trio.fail_after(timeout):
            stream = await _connect(upstream.host, svc.port)
    except trio.TooSlowError:
        raise UpstreamError(Failure.TIMEOUT, f"connect timed out after {timeout:g}s") from None
    except OSError as exc:
        raise UpstreamError(Failure.CONNECT, f"connect failed: {exc.strerror or exc}") from None
    if svc.tls == "implicit":
        stream = await upstream_tls_handshake(session, name, stream)
    metrics.upstream_connect_duration.labels(name, protocol).observe(time.monotonic() - started)
    return Conn(stream)


async def upstream_tls_handshake(session: Session, name: str, stream: trio.abc.Stream):
    """Verified TLS to the upstream (implicit or after STARTTLS). Raises UpstreamError."""
    tls = session.runtime.upstream_tls
    try:
        return await client_handshake(stream, tls.context(name), tls.server_name(name),
                                      session.listener.timeouts.upstream_connect)
    except TLSHandshakeError as exc:
        await trio.aclose_forcefully(stream)
        raise UpstreamError(Failure.TLS, f"TLS {exc.reason}: {exc.detail}") from None


def report(session: Session, name: str, error: UpstreamError) -> None:
    """Count and log an upstream failure once."""
    session.runtime.metrics.upstream_errors.labels(
        name, session.protocol, error.failure.value).inc()
    logs.event("upstream_error", LOG_LEVEL[error.failure], **session.log_fields(),
               upstream=name, reason=error.failure.value, detail=logs.sanitize(error.detail))
