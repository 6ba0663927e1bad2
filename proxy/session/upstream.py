"""The one way to open a connection to an upstream server, and to say what went wrong.

Used by the relay (imap_upstream.py, pop3_upstream.py), the gateway's POP3 client and the
upstream health checks. `open_upstream` opens TCP (an IP address is connected directly) and, for
`tls: implicit`, runs the verified TLS handshake; `start_tls` is the same handshake after
STARTTLS/STLS. Every error becomes an `UpstreamError` carrying a `Failure` (connect, tls,
timeout...), which picks the client's reply, the log level and the metric label. Neither
function has a timeout of its own: the caller bounds them with `deadline()`, a trio cancel scope
that turns an expiry into `UpstreamError(Failure.TIMEOUT)`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import ssl
from functools import lru_cache, partial
from types import TracebackType
from typing import Any, Awaitable, Callable

import trio

from .. import imap, logs, pop3
from ..config import ServicePort, Upstream
from ..net.conn import Conn, TLSStream
from ..net.tls import TLSConfigError, TLSHandshakeError, client_context, client_handshake
from .channel import Channel
from .failures import Failure

__all__ = ["UpstreamError", "adopt", "built_context", "connected_now", "deadline", "detach",
           "ip_family", "next_upstream_event", "open_upstream", "service", "start_tls", "tcp_connect"]

ContextFactory = Callable[[], ssl.SSLContext]  # may raise TLSConfigError (an unreadable file)
Connector = Callable[[str, int], Awaitable[trio.abc.Stream]]  # (host, port) -> TCP stream


class UpstreamError(Exception):
    """The upstream could not be used. `detail` is safe to log, never shown to the client."""

    def __init__(self, failure: Failure, detail: str):
        super().__init__(f"{failure.label}: {detail}")
        self.failure = failure
        self.detail = detail


_CLOSED = (imap.events.ConnectionClosed, pop3.events.ConnectionClosed)


async def next_upstream_event(channel: Channel[Any]) -> object:
    """The next event of an upstream's IMAP or POP3 dialogue; its parser's protocol error and
    the end of the stream are raised as UpstreamError. Bounded by the caller's deadline()."""
    try:
        event = await channel.next_event()
    except (imap.ProtocolError, pop3.ProtocolError) as exc:
        raise UpstreamError(Failure.PROTOCOL, f"bad response: {exc.text}") from None
    if isinstance(event, _CLOSED):
        raise UpstreamError(Failure.UPSTREAM, "connection closed by upstream")
    return event


class deadline:  # noqa: N801 - used like trio.fail_after
    """A cancel scope for talking to an upstream: past `seconds`, the step is cancelled and
    UpstreamError(TIMEOUT) raised, saying `what` was waited for. A plain class rather than a
    @contextmanager generator. One dialogue of several steps (connect, greeting, login) takes
    one of these and moves it on with `step()`: entering a trio cancel scope costs about three
    times as much as moving its deadline, and a relay login has four steps."""

    __slots__ = ("seconds", "what", "scope")

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = seconds, what
        self.scope = trio.CancelScope(deadline=trio.current_time() + seconds)

    def step(self, seconds: float, what: str) -> None:
        """The next step: `seconds` from now, for `what`."""
        self.seconds, self.what = seconds, what
        self.scope.deadline = trio.current_time() + seconds

    @property
    def expired(self) -> bool:
        """Whether this deadline passed (not some outer scope's cancellation)."""
        return self.scope.cancel_called

    @property
    def reason(self) -> str:
        return f"{self.what}: nothing within {self.seconds:g}s"

    def __enter__(self) -> deadline:
        self.scope.__enter__()
        return self

    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.scope.__exit__(etype, exc, tb)   # it swallows only its own expiry: raised below
        if self.scope.cancelled_caught:
            raise UpstreamError(Failure.TIMEOUT, self.reason) from None


async def built_context(upstream: Upstream, port: ServicePort) -> ContextFactory:
    """For callers without the runtime's cached contexts (the gateway's POP3 client, health
    checks): the upstream's TLS context, built off the event loop (loading the system CA
    bundle takes a good fraction of a second) and before any timer starts. A TLSConfigError
    is raised when the handshake asks for the context, so it is reported as a TLS failure."""
    if port.tls == "none":
        return _no_context
    try:
        context = await trio.to_thread.run_sync(partial(client_context, upstream, warn=False))
    except TLSConfigError as exc:
        error = exc

        def fail() -> ssl.SSLContext:
            raise error
        return fail
    return lambda: context


def _no_context() -> ssl.SSLContext:
    raise AssertionError("TLS asked of a plaintext service")


def service(upstream: Upstream, protocol: str) -> ServicePort:
    port = upstream.imap if protocol == "imap" else upstream.pop3
    if port is None:
        raise UpstreamError(Failure.INTERNAL, f"upstream has no {protocol}: section")
    return port


async def open_upstream(upstream: Upstream, protocol: str, context: ContextFactory,
                        connect: Connector | None = None) -> Conn:
    """TCP (`connect`, tcp_connect by default) and implicit TLS to the upstream's `protocol`
    service. Raises UpstreamError.

    Resource handling: on error nothing is left open; on success the caller owns the Conn."""
    svc = service(upstream, protocol)
    try:
        stream = await (connect or tcp_connect)(upstream.host, svc.port)
    except OSError as exc:
        raise UpstreamError(Failure.CONNECT, os_reason(exc)) from None
    if svc.tls == "implicit":
        stream = await start_tls(stream, upstream, context)
    return Conn(stream)


async def start_tls(stream: trio.abc.Stream, upstream: Upstream,
                    context: ContextFactory) -> TLSStream:
    """Verified TLS to the upstream on `stream` (implicit, or after STARTTLS/STLS). Raises
    UpstreamError (TLS); `stream` is closed then."""
    try:
        ctx = context()
        return await client_handshake(stream, ctx, upstream.server_name or upstream.host)
    except TLSConfigError as exc:  # an unreadable ca_file / client_cert
        await trio.aclose_forcefully(stream)
        raise UpstreamError(Failure.TLS, f"config: {logs.sanitize(str(exc), 120)}") from None
    except TLSHandshakeError as exc:
        await trio.aclose_forcefully(stream)
        raise UpstreamError(Failure.TLS, f"{exc.reason}: {exc.detail}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def tcp_connect(host: str, port: int) -> trio.abc.Stream:
    """TCP to host:port. An IP address connects directly (trio.open_tcp_stream's resolver and
    happy-eyeballs machinery cost more than the connect itself on loopback)."""
    family = ip_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)  # sets TCP_NODELAY
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # The non-blocking connect by hand: trio's socket.connect would resolve the literal
        # address again and wrap the wait in more scopes.
        error = sock.connect_ex((host, port))
        if error == errno.EINPROGRESS:
            if not connected_now(sock):   # (no checkpoint otherwise: the caller's next
                await trio.lowlevel.wait_writable(sock)   # read or write is one)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await trio.lowlevel.checkpoint()
        if error:
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))  # sets TCP_NODELAY


def adopt(sock: socket.socket) -> Conn:
    """A connected plain socket (a warm connection, session/warm_pool.py) as the session's Conn."""
    return Conn(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))


def detach(conn: Conn) -> socket.socket:
    """The plain socket under `conn` (from tcp_connect), taken out of trio's hands: `conn` is
    left closed without closing the socket. Nothing may be waiting on it."""
    stream = conn.stream
    assert isinstance(stream, trio.SocketStream), "only a plain TCP connection is detached"
    conn.closed = True
    sock = socket.socket(fileno=stream.socket.detach())
    sock.setblocking(False)
    return sock


def connected_now(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has already completed (or failed). On loopback and fast
    links it usually has by the time connect(2) returns EINPROGRESS: a poll(2) that does not
    wait costs less than waiting for writability through the event loop."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


@lru_cache(maxsize=256)
def ip_family(host: str) -> int | None:
    """AF_INET / AF_INET6 for an IP address literal; None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def os_reason(exc: OSError) -> str:
    """`Connection refused` rather than trio's `all attempts to connect ... failed`."""
    cause = exc.__cause__
    if exc.strerror is None and isinstance(cause, BaseExceptionGroup):
        first = cause.exceptions[0]
        if isinstance(first, OSError):
            exc = first
    return logs.sanitize(exc.strerror or str(exc), 80)
