"""The relay engine's thread accepting on a listener itself: a common session with no trio task.

Theory of operation (issue 16): on an IMAP relay listener without PROXY protocol (plain,
STARTTLS or implicit TLS; `relay.engine_accept`, with `engine_login`), the listener's accept
task registers the listening socket in the engine's epoll and parks. When it is readable the
engine's thread accepts (non-blocking, at most ACCEPT_BATCH per wake-up, so the sessions'
traffic is served in between) and opens the session as serve.py does, with the same code: the
listener's limits (ListenerServer.admit: max_connections, max_connections_per_ip, the refusal's
words), gauges, the session_start line (ListenerServer.opened), then an ImapEngineLogin adopted
by the engine (Engine.adopt) with no task (on an implicit-TLS listener a TLSAccept first:
the handshake in the engine's thread, engine_tls_accept.py); with `connect_early` for IMAP, the upstream's
non-blocking connect is begun right there (session/connect_early.py: plain socket calls), which
the engine's login takes (engine_login_route.open_socket) or trio's, if the session goes there.
Its end comes to `Accepted.ended` at its release:

- the common end (LOGOUT, a budget spent, the client gone, the login timeout, a failed TLS
  handshake) is done in the engine's thread: the upstream closed, the relay core settled, the
  kick's BYE, on TLS our close_notify, on plain TCP the lingering close (net/conn.py's:
  half-close, read to EOF; a client that has not closed yet is read by a Lingering entry in the
  engine for at most LINGER_TIMEOUT), then the socket closed and
  ListenerServer.closed (counts, duration, the session_end line), an early connection no
  login took closed (counted `unused`): no trio wake-up at all;
- a session that needs trio (STARTTLS, SASL prompts, a login the engine does not route or that
  the upstream refused, COMPRESS) or whose last words the kernel did not take at once gets a
  task then, in the listener's sessions nursery (ListenerServer.run), which goes on where the
  engine stopped (imap_session.resume), as a session handed back by the engine always did.

The rest follows trio's path: a reload is read at each accept (ListenerServer.current); a
listener that no longer qualifies, an accept error trio's loop handles (out of descriptors:
back-off and log), or the engine's thread dying hand the accepting back to trio's loop (for
good). The drain: the listener's task is cancelled (unlisten), then one callback per listener
drains every session it holds (Engine.step). An admin kick reaches the engine through
`Session.engine_kick`; at shutdown_timeout the listener's keeper task, cancelled with the
sessions nursery, ends every session still in the engine. Sessions, `live` and every Accepted
are touched under the engine's lock only.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from functools import partial
from typing import Awaitable, Callable

import trio

from .. import logs
from ..net.conn import LINGER_TIMEOUT, Conn, TLSStream
from ..net.raw_io import CHECKPOINT_EVERY, RECEIVE_SIZE
from ..net.tls_engine import TLSEngine
from ..session import connect_early
from ..session.context import Session
from ..session.imap_front import ImapFront
from ..session.serve import KICKED, ListenerServer, ListenerView
from .engine import Engine
from .engine_entry import engine
from .engine_imap import ImapEngineSession
from .engine_login import ImapEngineLogin
from .engine_session import IN, EngineSession, Side
from .engine_tls_accept import TLSAccept
from .imap_session import resume
from .relay_session import release_early

__all__ = ["accept_in_engine", "qualifies"]

ACCEPT_BATCH = 16   # connections accepted per wake-up at most (a flood still lets sessions run)
# accept(2) errors that concern only the connection being accepted (as serve.py: skip it)
_SKIPPED = {errno.EPERM, errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT,
            errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP,
            errno.ENETUNREACH}


def qualifies(view: ListenerView) -> bool:
    """The engine's thread can accept on this listener under this runtime."""
    listener, runtime = view.listener, view.runtime
    relay = runtime.config.relay
    return (relay.engine == "epoll" and relay.engine_login and relay.engine_accept
            and listener.protocol == "imap" and listener.mode == "relay"
            and not listener.proxy_protocol)


async def accept_in_engine(server: ListenerServer, raw: socket.socket, sessions: trio.Nursery,
                           local: tuple[str, int] | None) -> None:
    """Accept on `raw` in the engine's thread until cancelled; returns when trio's accept loop
    is to go on instead (the listener does not qualify, or no longer does)."""
    view = server.current()
    if not qualifies(view) or view.runtime.drain.is_set():
        return
    acceptor = _Acceptor(engine(view.runtime.config.relay), server, raw, sessions, local)
    del view   # (parked below: a reload must be able to free this runtime)
    await acceptor.run()


class _Acceptor:
    """One listening socket in the engine; `live`: its sessions the engine still owns."""

    def __init__(self, eng: Engine, server: ListenerServer, raw: socket.socket,
                 sessions: trio.Nursery, local: tuple[str, int] | None):
        self.engine, self.server, self.raw, self.sessions = eng, server, raw, sessions
        self.local = local
        self.fd = raw.fileno()
        self.live: set[Accepted] = set()
        self.cutting = False   # shutdown_timeout or a crash: sessions are closed, none to trio
        self.task: trio.lowlevel.Task | None = None
        self.token = trio.lowlevel.current_trio_token()
        self.counted = server.current().runtime.metrics.relay_engine_accepted.labels(server.name)

    async def run(self) -> None:
        eng = self.engine
        self.task = trio.lowlevel.current_task()
        if not eng.listen(self.fd, self.ready, self.died):
            return
        self.sessions.start_soon(self.keep)
        self.server.current().runtime.drain.subscribe(self.drained)

        def abort(_: object) -> trio.lowlevel.Abort:
            with eng._lock:
                if eng.unlisten(self.fd):
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED   # (stopped: its reschedule is on the way)

        await trio.lowlevel.wait_task_rescheduled(abort)

    def died(self) -> None:
        """The engine's thread died (relay_engine_crash): its sessions are closed as they are
        released (no lingering in a dead engine), trio's accept loop goes on."""
        self.cutting = True
        self.stop()

    def stop(self) -> None:
        """Trio's accept loop goes on (under the lock)."""
        self.engine.unlisten(self.fd)
        if self.task is not None:
            try:
                self.token.run_sync_soon(trio.lowlevel.reschedule, self.task)
            except trio.RunFinishedError:
                pass

    # -- the engine's thread ---------------------------------------------------------------------
    def ready(self) -> None:
        """The listening socket is readable: accept a batch (under the lock)."""
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.raw.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _SKIPPED:
                    continue
                self.stop()   # closed, or out of a resource: trio's loop backs off and logs
                return
            try:
                self.take(sock, peer)
            except Exception:   # a bug: this connection is lost, never the listener
                logs.event("session_crash", logging.ERROR, exc_info=True,
                           listener=self.server.name, client=peer[0])
                sock.close()

    def take(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        server = self.server
        view = server.current()
        if not qualifies(view):   # (a reload changed it): this one and the next go to trio
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            self._to_trio(server._connection, stream, peer, self.local)
            self.stop()
            return
        local = self.local if self.local is not None else sock.getsockname()
        implicit = view.listener.tls == "implicit"
        session = Session(view.runtime, view.listener, peer[0], peer[1], local[0], local[1],
                          tls=implicit)
        sock.setblocking(False)
        refused = server.admit(view, session)
        if refused is not None:
            if view.listener.tls == "none":   # (as serve.py: not before a STARTTLS)
                try:
                    sock.send(refused)
                except OSError:
                    pass
            sock.close()
            return
        self.counted.inc()
        try:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))   # (TCP_NODELAY)
            conn = Conn(stream, fresh=not implicit)
            front = ImapFront(session, conn)
            fd, eng = sock.fileno(), self.engine
            root: EngineSession = ImapEngineLogin(front, fd, eng) if not implicit else TLSAccept(
                eng, session, conn, stream, fd,
                TLSEngine.server(view.runtime.server_tls[view.listener.name].context),
                lambda: ImapEngineLogin(front, fd, eng))
        except BaseException:   # (a bug: logged by `ready`, the connection closed there)
            server.limiter.release(session.client_ip)
            raise
        server.opened(view, session, conn)
        accepted = Accepted(self, view, session, sock, front, root)
        self.live.add(accepted)
        session.engine_kick = partial(self.engine.locked, accepted.kick)
        target = view.runtime.early_targets.get("imap")
        if target is not None:   # connect_early: the upstream's accept and greeting meanwhile
            session.early = connect_early.start(target)
        self.engine.adopt(root)
        if session.runtime.drain.is_set():   # (drained while it was accepted)
            self.engine.step(self.engine.latest(root), self.engine.latest(root).drained)

    def _to_trio(self, task: Callable[..., Awaitable[object]], *args: object) -> None:
        """Start `task(*args)` in the listener's sessions nursery (any thread)."""
        try:
            self.token.run_sync_soon(self.sessions.start_soon, partial(task, *args))
        except trio.RunFinishedError:
            pass

    # -- trio's thread ---------------------------------------------------------------------------
    def drained(self) -> None:
        """The drain: every session the engine still owns is told."""
        self.engine.locked(self._drain_all)

    def _drain_all(self) -> None:
        for accepted in list(self.live):
            sess = self.engine.latest(accepted.root)
            if accepted.lingering is None:
                self.engine.step(sess, sess.drained)

    async def keep(self) -> None:
        """Cancelled with the sessions nursery (shutdown_timeout, the run's end): every session
        still in the engine ends then, as trio's are cancelled."""
        try:
            await trio.sleep_forever()
        finally:
            self.engine.locked(self._cut)

    def _cut(self) -> None:
        self.cutting = True
        for accepted in list(self.live):
            accepted.cut()


class Accepted:
    """A connection the engine accepted, while the engine owns it."""

    __slots__ = ("acceptor", "view", "session", "sock", "front", "root", "lingering")

    def __init__(self, acceptor: _Acceptor, view: ListenerView, session: Session,
                 sock: socket.socket, front: ImapFront, root: EngineSession):
        """`root`: the session adopted first (an ImapEngineLogin, or an implicit-TLS client's
        TLSAccept, which becomes one)."""
        self.acceptor, self.view, self.session, self.sock = acceptor, view, session, sock
        self.front, self.root = front, root
        self.lingering: Lingering | None = None
        root.ended = self.ended

    def kick(self) -> None:
        """`mailproxy kick` (under the lock): the session ends, the client gets KICKED."""
        if self.lingering is None:
            self.acceptor.engine.release(self.acceptor.engine.latest(self.root))

    def cut(self) -> None:
        self.acceptor.engine.release(self.lingering if self.lingering is not None
                                     else self.acceptor.engine.latest(self.root))

    @property
    def login(self) -> ImapEngineLogin | None:
        """The session's ImapEngineLogin (None while, or if, a TLS handshake never ended)."""
        root = self.root
        login = root if isinstance(root, ImapEngineLogin) else root.successor
        assert login is None or isinstance(login, ImapEngineLogin)
        return login

    def ended(self, sess: EngineSession) -> None:
        """The engine released the session (under the lock): end it here, or give it a task."""
        login = self.login
        relay = login.successor if login is not None else None
        if login is None:   # (a TLS handshake that failed or was cut: no words to send)
            self._end()
            return
        if relay is None and login.login is not None:   # (a login cut mid-way: closed twice is fine)
            login.login.sock.close()
        if not self.acceptor.cutting and (sess.handed_back or any(
                side.out or (side.tls is not None and side.tls.wants_send)
                for side in sess.sides)):   # (a TLS side's rest is requeued in its TLSEngine)
            self._to_trio(login)
            return
        if isinstance(relay, ImapEngineSession):
            relay.core.settle()   # (its byte counts, the commands never answered)
            relay.upstream.conn.closed = True
            assert login.login is not None   # (a relay comes from the engine's own login)
            login.login.sock.close()
        self._end()

    def _to_trio(self, login: ImapEngineLogin) -> None:
        """A task goes on from where the engine stopped (imap_session.resume)."""
        acceptor, session = self.acceptor, self.session
        acceptor.live.discard(self)
        session.engine_kick = None
        conn = self.front.conn
        acceptor._to_trio(acceptor.server.run, self.view, session, conn,
                          partial(resume, self.front, login))

    def _end(self) -> None:
        """Last words, the lingering close, then closed (serve.py's `run` ends so)."""
        session, conn = self.session, self.front.conn
        session.engine_kick = None
        release_early(session)
        stream = conn.stream
        if isinstance(stream, TLSStream):
            self._close_tls(stream.engine, session.kicked)
        elif session.kicked and self.login is not None:
            try:
                conn.bytes_out += self.sock.send(KICKED[session.listener.protocol])
            except OSError:
                pass
        session.bytes_from_client, session.bytes_to_client = conn.bytes_in, conn.bytes_out
        session.conn = None
        if not isinstance(stream, TLSStream) and not conn.closed and not conn.eof \
                and not self.acceptor.cutting and self._linger():
            return
        self.close()

    def _close_tls(self, tls: TLSEngine, kicked: bool) -> None:
        """A TLS client's last words and our close_notify (RFC 8446 6.1), as Conn.aclose sends
        them, written if the kernel takes them now (a client that does not read its socket
        does not get them; trio's close waits CLOSE_NOTIFY_TIMEOUT for it). No lingering: a
        TLS stream cannot half-close (Conn.linger)."""
        conn = self.front.conn
        try:
            if kicked:
                words = KICKED[self.session.listener.protocol]
                tls.write(words)
                conn.bytes_out += len(words)
            tls.close()
            self.sock.send(tls.data_to_send())
        except (OSError, ssl.SSLError):
            pass

    def _client_ended(self, reads: int) -> bool:
        """Read (and drop) what the client sends, `reads` times at most: True once it has
        closed or its socket failed, False while it may send more."""
        try:
            for _ in range(reads):
                if not self.sock.recv(RECEIVE_SIZE):
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        return False

    def _linger(self) -> bool:
        """Half-close, read what the client still sends; True when it has not closed yet (a
        Lingering entry reads it to its end, at most LINGER_TIMEOUT). A client that has closed
        already (after LOGOUT's OK, mostly: engine_logout.py does not read it) is found so by
        the first read, and needs no half-close: the close sends our FIN."""
        if self._client_ended(1):
            return False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        if self._client_ended(CHECKPOINT_EVERY):   # bounded: a client that floods waits below
            return False
        eng = self.acceptor.engine
        self.lingering = Lingering(eng, self, eng.now + LINGER_TIMEOUT)
        eng.adopt(self.lingering)
        return True

    def close(self) -> None:
        """The end: the socket closed, the counts and the session_end line."""
        self.front.conn.closed = True
        self.sock.close()   # (never registered in trio's epoll: no notify_closing needed)
        self.acceptor.live.discard(self)
        self.acceptor.server.closed(self.view, self.session)


class Lingering(EngineSession):
    """A closed session's client, read to its EOF or LINGER_TIMEOUT before the socket closes
    (counted in the engine's sessions meanwhile)."""

    __slots__ = ("until",)

    def __init__(self, eng: Engine, accepted: Accepted, until: float):
        super().__init__(eng, accepted.session, accepted.front.conn, accepted.sock.fileno(),
                         None, -1)
        self.until = until
        self.ended = lambda _: accepted.close()

    def received(self, side: Side, data: bytes) -> None:
        if not data:
            self.finish()

    def due(self) -> float:
        return self.until

    def timer(self, now: float) -> None:
        self.finish()

    def masks(self) -> tuple[int, ...]:
        return (IN,)
