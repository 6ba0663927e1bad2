"""Serving a listener: accept, admit, PROXY header, implicit TLS, then the protocol handler.

Every connection runs under `_connection()`, which guarantees the stream is closed, the gauges
are decremented and one session_end log line is written, whatever happens inside. An exception
escaping a protocol handler is a bug: it is logged with its traceback and the connection closed;
it never reaches the listener, so one session can never take down the others.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import socket
import time
from functools import partial
from typing import Awaitable, Callable

import trio

from .. import logs
from ..config import Listener
from ..net.conn import Conn, PrefixedStream
from ..net.limits import ConnectionLimiter
from ..net.proxy_protocol import ProxyHeaderParser, ProxyProtocolError, is_trusted
from .context import Runtime, Session
from .failures import Close
from .starttls import accept_tls

PROXY_HEADER_TIMEOUT = 5.0
# accept(2) errors that say the process or system is out of a resource: wait, then accept again
# (as trio.serve_listeners does) rather than stop listening
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_BACKOFF = 0.1   # seconds
# while accept keeps failing so, one accept_failed line per listener at most this often (seconds),
# counting the failures since the last line; the first failure is logged at once
ACCEPT_FAILED_LOG_INTERVAL = 10.0
# accept(2) errors that end the loop (the socket was closed under it), and those that concern
# only the connection being accepted (a peer that reset or was refused by a firewall): as trio
ACCEPT_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
ACCEPT_IGNORED_ERRNOS = {errno.EPERM, errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN,
                         errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                         errno.EOPNOTSUPP, errno.ENETUNREACH}

Handler = Callable[[Session, Conn], Awaitable[None]]
EngineAccept = Callable[["ListenerServer", socket.socket, trio.Nursery, "tuple[str, int] | None"],
                        Awaitable[None]]

REFUSALS = {"imap": b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n",
             "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n"}


KICKED = {"imap": b"* BYE Disconnected by the administrator.\r\n",
           "pop3": b"-ERR [SYS/TEMP] Disconnected by the administrator.\r\n"}


class OpenSessions:
    """The sessions open on every listener of the process; `wait_none()` returns once there
    are none (SIGTERM drain waits on it, without polling). `add` and `discard` may come from
    any thread (the relay engine opens and ends sessions of its own): the set's operations are
    atomic under the GIL, and the waiter, if any, is woken through trio's token."""

    def __init__(self) -> None:
        self.sessions: set[Session] = set()
        self._none: trio.Event | None = None   # while wait_none() waits
        self._token: trio.lowlevel.TrioToken | None = None

    def __len__(self) -> int:
        return len(self.sessions)

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        none = self._none
        if not self.sessions and none is not None and self._token is not None:
            try:
                self._token.run_sync_soon(none.set)
            except trio.RunFinishedError:
                pass

    async def wait_none(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            while self.sessions:
                self._none = none = trio.Event()
                if self.sessions:   # (one that ended before _none was set is seen here)
                    await none.wait()
        finally:
            self._none = None


class ListenerView:
    """What every connection of one listener needs from one runtime, looked up once per reload
    instead of once per connection: the listener's config and its metric label children."""

    __slots__ = ("runtime", "listener", "connections", "active", "duration")

    def __init__(self, runtime: Runtime, name: str):
        self.runtime = runtime
        self.listener = next(lst for lst in runtime.config.listeners if lst.name == name)
        labels = (name, self.listener.protocol, self.listener.tls)
        metrics = runtime.metrics
        self.connections = metrics.connections.labels(*labels)
        self.active = metrics.connections_active.labels(*labels)
        self.duration = metrics.session_duration.labels(name, self.listener.protocol)


class ListenerServer:
    """One configured listener. `runtime` is read at accept time, so a reload applies to new
    connections only. Its sessions are counted in `active` (shared by all listeners)."""

    def __init__(self, name: str, get_runtime: Callable[[], Runtime], handler: Handler,
                 active: OpenSessions | None = None, in_engine: EngineAccept | None = None):
        """`in_engine`: accepts on a listening socket in the relay engine's thread for as long
        as it can (relay/engine_accept.py), trio's accept loop going on when it returns."""
        self.name = name
        self.in_engine = in_engine
        self.get_runtime = get_runtime
        self.handler = handler
        self.limiter = ConnectionLimiter()
        self.active = active if active is not None else OpenSessions()
        self._view: ListenerView | None = None

    def current(self) -> ListenerView:
        runtime = self.get_runtime()
        view = self._view
        if view is None or view.runtime is not runtime:
            view = self._view = ListenerView(runtime, self.name)
        return view

    def forget_runtime(self) -> None:
        """A reload: drop what was kept for the old runtime (the next accept builds anew)."""
        self._view = None

    async def serve(self, listeners: list[trio.SocketListener], sessions: trio.Nursery, *,
                    task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on `listeners` (bound by the app, or inherited by a worker) until cancelled.
        Sessions run in `sessions`, so that stopping the accept loop (drain) leaves them
        running. Like trio.serve_listeners, minus its wrapper that closes every stream once
        more after `_connection` has closed it (two cancel scopes per connection)."""
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(self._accept, listener, sessions)
            task_status.started(listeners)

    async def _accept(self, listener: trio.SocketListener, sessions: trio.Nursery) -> None:
        """Accept on one listening socket until cancelled; the socket is closed then.

        The stdlib socket is driven directly (a second Python object on the same descriptor,
        detached at the end so that only the listener closes it): trio's `accept()` first
        tries accept(2), which fails with EAGAIN whenever nothing is queued, and after each
        success yields to the scheduler once more; here the loop waits for readiness first,
        then accepts one connection (each accept follows a pass of the scheduler, so a flood
        of connections still lets the sessions run). The peer's address comes with accept(2)
        (no getpeername per connection), and a listener bound to one address is that address
        for every connection (no getsockname either)."""
        raw = socket.socket(fileno=listener.socket.fileno())
        try:
            async with listener:
                local = _fixed_local_address(raw)
                if self.in_engine is not None:
                    await self.in_engine(self, raw, sessions, local)
                await self._accept_from(raw, sessions, local)
        finally:
            raw.detach()   # the listener owns (and has closed) the descriptor

    async def _accept_from(self, raw: socket.socket, sessions: trio.Nursery,
                           local: tuple[str, int] | None) -> None:
        failures, logged_at = 0, -math.inf   # unlogged accept failures; when the last line was
        while True:
            await trio.lowlevel.wait_readable(raw)   # (also the loop's checkpoint)
            try:
                sock, peer = raw.accept()
            except BlockingIOError:   # another process (a worker) took it
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_CLOSED_ERRNOS:
                    raise trio.ClosedResourceError("listening socket closed") from None
                if exc.errno in ACCEPT_IGNORED_ERRNOS:
                    continue
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                failures += 1
                if trio.current_time() - logged_at >= ACCEPT_FAILED_LOG_INTERVAL:
                    logs.event("accept_failed", logging.ERROR, listener=self.name,
                               reason=os.strerror(exc.errno), failures=failures)
                    failures, logged_at = 0, trio.current_time()
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            sessions.start_soon(self._connection, stream, peer, local)

    async def _connection(self, stream: trio.SocketStream, peer: tuple[str, int],
                          local: tuple[str, int] | None) -> None:
        """One connection, from accept to close: the stream is closed whatever happens."""
        try:
            await self._session(stream, peer, local)
        except BaseException:
            await trio.aclose_forcefully(stream)   # (a no-op when the session closed it)
            raise

    async def _session(self, stream: trio.SocketStream, peer: tuple[str, int],
                       local: tuple[str, int] | None) -> None:
        view = self.current()
        runtime, listener = view.runtime, view.listener
        if local is None:
            try:
                local = stream.socket.getsockname()
            except OSError:
                await trio.aclose_forcefully(stream)
                return
        unread = b""
        if listener.proxy_protocol:
            header = await self._proxy_header(listener, stream, peer[0])
            if header is None:
                await trio.aclose_forcefully(stream)
                return
            unread, source = header
            if source is not None:
                peer = source
        session = Session(runtime, listener, peer[0], peer[1], local[0], local[1],
                          tls=listener.tls == "implicit")
        refused = self.admit(view, session)
        if refused is not None:
            with trio.move_on_after(1):
                if listener.tls == "none":
                    await Conn(stream).send(refused)
            await trio.aclose_forcefully(stream)
            return
        # a plain client waits for the greeting: its first read waits for readiness (a TLS
        # client's ClientHello does not wait for anything)
        conn = (Conn(PrefixedStream(stream, unread)) if unread
                else Conn(stream, fresh=listener.tls != "implicit"))
        self.opened(view, session, conn)
        await self.run(view, session, conn, partial(self.handler, session, conn),
                       handshake=listener.tls == "implicit")

    def admit(self, view: ListenerView, session: Session) -> bytes | None:
        """Count a new connection against the listener's limits: None when admitted, else the
        words refusing it (logged and counted). Any thread (the relay engine accepts too)."""
        view.connections.inc()
        listener = session.listener
        refused = self.limiter.admit(session.client_ip, listener.max_connections,
                                     listener.max_connections_per_ip)
        if refused is None:
            return None
        session.runtime.metrics.limit_hits.labels(refused).inc()
        logs.event("connection_refused", **session.log_fields(), limit=refused)
        return REFUSALS[listener.protocol]

    def opened(self, view: ListenerView, session: Session, conn: Conn) -> None:
        """An admitted connection becomes an open session (gauges, the drain's count, the
        session_start line). Any thread."""
        session.conn = conn
        view.active.inc()
        self.active.add(session)
        if logs.enabled(logging.DEBUG):
            logs.event("session_start", logging.DEBUG, **session.log_fields(),
                       tls=session.listener.tls)

    async def run(self, view: ListenerView, session: Session, conn: Conn,
                  handler: Callable[[], Awaitable[None]], handshake: bool = False) -> None:
        """Run an open session's `handler` (from the start, or where the relay engine left it)
        under its cancel scope (admin kick), after the implicit TLS `handshake`, then end it:
        last words, close, `closed`."""
        try:
            with trio.CancelScope() as session.scope:
                if session.kicked:   # (kicked while the engine handed it over)
                    session.scope.cancel()
                if handshake and not await self._handshake(session, conn):
                    return
                await handler()
            if session.kicked:
                with trio.move_on_after(1):
                    await conn.send(KICKED[session.listener.protocol])
        except Exception:
            session.close_reason = Close.INTERNAL_ERROR
            logs.event("session_crash", logging.ERROR, exc_info=True, **session.log_fields())
        finally:
            session.bytes_from_client, session.bytes_to_client = conn.bytes_in, conn.bytes_out
            session.conn = None
            await conn.linger()  # so that the last reply is not lost to a RST
            await conn.aclose()
            self.closed(view, session)

    def closed(self, view: ListenerView, session: Session) -> None:
        """The session's connection is closed: out of the counts, its session_end line. Any
        thread (the relay engine ends its own sessions)."""
        self.active.discard(session)
        self.limiter.release(session.client_ip)
        view.active.dec()
        view.duration.observe(time.monotonic() - session.started)
        session.log_end()

    async def _proxy_header(self, listener: Listener, stream: trio.SocketStream,
                            peer_ip: str) -> tuple[bytes, tuple[str, int] | None] | None:
        """PROXY protocol v1/v2 from a trusted peer: (bytes after the header, client address or
        None for LOCAL/UNKNOWN). None when the peer is untrusted or the header is bad: such
        connections are closed, never sniffed for a header that may be absent."""
        if not is_trusted(peer_ip, listener.trusted_proxies):
            logs.event("proxy_protocol_refused", logging.WARNING, listener=listener.name,
                       client=peer_ip, reason="untrusted")
            return None
        parser = ProxyHeaderParser()
        try:
            with trio.fail_after(PROXY_HEADER_TIMEOUT):
                header = None
                while header is None:
                    header = parser.feed(await stream.receive_some(4096))
        except (ProxyProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            reason = exc.reason if isinstance(exc, ProxyProtocolError) else "timeout_or_reset"
            logs.event("proxy_protocol_refused", logging.WARNING, listener=listener.name,
                       client=peer_ip, reason=logs.sanitize(reason))
            return None
        return parser.remainder, header.source

    async def _handshake(self, session: Session, conn: Conn) -> bool:
        failed = await accept_tls(session, conn)
        if failed is not None:
            session.close_reason = failed
        return failed is None


def _fixed_local_address(raw: socket.socket) -> tuple[str, int] | None:
    """The local address of every connection of a listening socket bound to one address;
    None when it is bound to a wildcard (0.0.0.0, ::): each connection has its own then."""
    address = raw.getsockname()
    if ipaddress.ip_address(address[0]).is_unspecified:
        return None
    return address[0], address[1]
