"""An IMAP relay session the relay engine runs from its greeting: pre-login, login, relay.

Theory of operation (issue 16, lever 1): a client of the relay whose socket the engine can own
(plain or implicit TLS, no PROXY header; `relay.engine_login`) is greeted and read by the
engine's thread from the start (engine_login_task.py parks the connection's task). It answers
CAPABILITY, NOOP, ID and LOGOUT (BAD to what is not allowed before login) with the sans-IO
machine and the budgets ImapFront uses (session/imap_prelogin.py, session/front.py) and runs
the listener's `login` timeout and the drain itself, as Front.until_logged_in does. A LOGIN, or
an AUTHENTICATE with its initial response, whose route needs no I/O (engine_login_route.py)
connects without blocking and writes the early login; the greeting and the verdict are read and decided by the
machine trio's login uses (imap_login_machine.py: a refused early login is sent again for what
this connection announced, asked with CAPABILITY when its greeting said nothing; an OK without
capabilities asks for them). An OK is answered to the client and the session becomes
the ImapEngineSession trio would have made (Engine.succeed): the task never woke up. A refusal
or an upstream failure goes to trio as a DecidedLogin, answered from its outcome (log_in's
metrics, throttle delay, log line and NO), the upstream asked once.

With `connect_early:` the login takes the connection begun at the client's accept (as trio's
dial does, session/connect_early.py); one that fails to connect, is dropped before the verdict
or gets a temporary failure goes to trio, which logs in on a fresh connection.

With `reuse:` on its upstream, a login of the same user and password takes a parked,
logged-in connection instead (engine_reuse.py, upstream_pool.py), answered as a fresh OK.

Everything else hands the session back to trio with the event it stopped at pending: STARTTLS,
an AUTHENTICATE needing prompts, a literal, a malformed line, a login it does not route (an
upstream with `warm_pool:` too, which trio's login path honours).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import time

import trio

from .. import logs
from ..config import Reuse
from ..imap import NEED_DATA, ProtocolError, events, writer
from ..metrics import command_label
from ..net.conn import Conn
from ..session import connect_early
from ..session.failures import Close, Failure, auth_result
from ..session.imap_front import ImapFront
from ..session.imap_prelogin import LoginRequest, Then
from ..session.upstream import UpstreamError, connected_now
from . import engine_reuse
from .engine import Engine
from .engine_entry import engine
from .engine_imap import ImapEngineSession
from .engine_login_route import EngineRoute, engine_route, open_socket
from .engine_login_state import DecidedLogin, EngineLoginStep
from .engine_session import IN, OUT, EngineSession, Side
from .imap_capabilities import relayable
from .imap_core import ImapRelayCore
from .imap_login_machine import GREETED, Failed, ImapLogin, Send, Verdict, failure_of
from .imap_relay import client_parser
from .imap_upstream import UpstreamIMAP, id_fields

__all__ = ["DecidedLogin", "ImapEngineLogin", "Phase"]   # (DecidedLogin: engine_login_state.py)

# Commands the engine hands to trio before counting them (a LOGIN it cannot route, too).
_TRIO_COMMANDS = frozenset((b"STARTTLS",))


class Phase(enum.Enum):
    PRELOGIN = "prelogin"
    CONNECTING = "connecting"
    LOGGING_IN = "logging_in"


class ImapEngineLogin(EngineSession):
    """The client, then the upstream too; `pending`: the event trio goes on from."""

    __slots__ = ("front", "phase", "pending", "login", "login_at", "upstream_at", "secret",
                 "reused_login")

    def __init__(self, front: ImapFront, client_fd: int, eng: Engine | None = None) -> None:
        """`eng`: the engine, when made in its thread (engine_accept.py)."""
        session = front.session
        if eng is None:
            eng = engine(session.runtime.config.relay)
        super().__init__(eng, session, front.conn, client_fd, None, -1)
        self.front = front
        self.phase = Phase.PRELOGIN
        self.pending: object = None
        self.login: EngineLoginStep | None = None
        self.login_at = eng.clock() + session.listener.timeouts.login
        self.upstream_at = float("inf")
        self.secret: bytes | None = None   # the login's, when its upstream has reuse: on
        self.reused_login: float | None = None   # a parked connection's upstream login time

    # -- the engine's calls --------------------------------------------------------------------
    def start(self) -> None:
        self.send(self.client, self.front.machine.greeting())
        self.front.greeted = True
        self._answer()

    def received(self, side: Side, data: bytes) -> None:
        if side is self.client:
            if not data:
                side.conn.eof = True
                self._end(Close.CLIENT_CLOSED)
                return
            self.front.channel.parser.receive_data(data)
            if self.phase is Phase.PRELOGIN:
                self._answer()
            return
        if self.phase is Phase.CONNECTING:   # (refused: a hang-up)
            self._connected()
            return
        self._upstream_data(data)

    def writable(self, side: Side) -> None:
        if side is self.upstream and self.phase is Phase.CONNECTING:
            self._connected()

    def masks(self) -> tuple[int, ...]:
        client = OUT if self.client.out else (IN if self.phase is Phase.PRELOGIN else 0)
        if self.upstream is self.client:
            return (client,)
        if self.phase is Phase.CONNECTING:
            return client, OUT
        return client, (OUT if self.upstream.out else IN)

    def due(self) -> float:
        return min(self.login_at, self.upstream_at)

    def timer(self, now: float) -> None:
        if now >= self.login_at:   # as Front.until_logged_in
            self.send(self.client, self.front.LOGIN_TIMED_OUT)
            self.session.end(Close.LOGIN_TIMEOUT)
            self._close_upstream()
            self.finish()
        elif now >= self.upstream_at:
            what = "greeting" if self.phase is Phase.CONNECTING or not self._greeted() else "login"
            seconds = self.session.listener.timeouts.upstream_connect if what == "greeting" \
                else self.session.listener.timeouts.upstream_response
            self._failed(UpstreamError(Failure.TIMEOUT, f"{what}: nothing within {seconds:g}s"))

    def drained(self) -> None:
        self.send(self.client, self.front.SHUTTING_DOWN)
        self.session.close_reason = Close.SHUTDOWN
        self._close_upstream()
        self.finish()

    # -- pre-login -------------------------------------------------------------------------------
    def _answer(self) -> None:
        parser = self.front.channel.parser
        while not self.done and self.phase is Phase.PRELOGIN:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                self._to_trio(exc)
                return
            if event is NEED_DATA:
                return
            if isinstance(event, events.CommandStart):   # (as ImapFront: the Command follows)
                continue
            if not isinstance(event, events.Command) or event.name in _TRIO_COMMANDS:
                self._to_trio(event)
                return
            self._command(event)

    def _command(self, cmd: events.Command) -> None:
        """As Front._command with ImapFront._dispatch, for what the engine finishes itself."""
        front = self.front
        answer = front.machine.answer(cmd, front.channel.parser.buffered)
        if answer.then in (Then.TLS, Then.SASL):   # (STARTTLS never gets here)
            self._to_trio(cmd)
            return
        if answer.then is Then.LOGIN:
            assert answer.login is not None
            self._log_in(cmd, answer.login)
            return
        if not front.admit():
            self._last(front.TOO_MANY_COMMANDS, Close.PREAUTH_COMMANDS)
            return
        started = time.monotonic()
        self.send(self.client, answer.untagged + answer.tagged)
        front.meter.completed(command_label("imap", cmd.name), front.status_of(answer.tagged),
                              started)
        if answer.bad and front.bad_spent():
            self._last(front.TOO_MANY_BAD, Close.BAD_COMMANDS)
        elif answer.close is not None:
            self._last(answer.last_words, answer.close)

    def _last(self, words: bytes, reason: Close) -> None:
        if words:
            self.send(self.client, words)
        self._end(reason)

    def _end(self, reason: Close) -> None:
        self.session.end(reason)
        self._close_upstream()
        self.finish()

    # -- login -------------------------------------------------------------------------------
    def _log_in(self, cmd: events.Command, request: LoginRequest) -> None:
        """Connect and send the early login when the route needs no I/O; else trio's."""
        session = self.session
        route = engine_route(session, request.credentials, self.front.commands)
        reuse = engine_reuse.reuse_of(route.upstream) if route is not None else None
        if route is not None and reuse is not None:   # (upstream_pool.py)
            creds = request.credentials
            self.secret = engine_reuse.secret(self.engine, creds.user, creds.password)
            if self._reused(cmd, request, route, reuse):
                return
        sock = open_socket(session, route) if route is not None else None
        if route is None or sock is None:
            self._trio_logs_in(cmd)
            return
        conn = Conn(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))   # (TCP_NODELAY)
        up = UpstreamIMAP.over(conn)
        machine = ImapLogin(up)
        sent = machine.begin_login(request.credentials, id_fields(session, route.upstream),
                                   route.early)
        if sent is None:   # (no one-write login for those capabilities)
            sock.close()
            self._trio_logs_in(cmd)
            return
        self.login = EngineLoginStep(cmd, request, route.name, route.upstream, sock, up, machine)
        self.login.sent = sent
        self.phase = Phase.CONNECTING
        self.upstream_at = self.engine.now + session.listener.timeouts.upstream_connect
        side = Side(conn, sock.fileno(), self)
        # A connect begun at accept, or one to a loopback upstream (the kernel ends its handshake
        # inside connect(2)), has completed already: the login goes now, not after the next
        # poll's EPOLLOUT (a poll, a wake-up and an epoll_ctl saved; bench/README.md, pp's section)
        if connected_now(sock):
            self.engine.attach(self, side, IN)
            self._connected()
        else:
            self.engine.attach(self, side, OUT)

    def _reused(self, cmd: events.Command, request: LoginRequest, route: EngineRoute,
                reuse: Reuse) -> bool:
        """Log in on a parked connection of this user with the same credentials
        (engine_reuse.take), as if the upstream had just said OK; False: none."""
        assert self.secret is not None
        session = self.session
        found = engine_reuse.take(self.engine, session, route.name, reuse,
                                  engine_reuse.pool_user(session, route.upstream,
                                                         request.credentials.user), self.secret)
        if found is None:
            return False
        sock, capabilities, self.reused_login = found
        early, session.early = session.early, None   # (connect_early's, unused)
        if early is not None:
            connect_early.discard(early)
            metrics = session.runtime.metrics
            metrics.child(metrics.upstream_early, early.name, "imap", "unused").inc()
        conn = Conn(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        up = UpstreamIMAP.over(conn)
        up.capabilities = capabilities
        self.login = EngineLoginStep(cmd, request, route.name, route.upstream, sock, up,
                            ImapLogin(up, greeted=True))
        self.phase = Phase.LOGGING_IN
        self.engine.attach(self, Side(conn, sock.fileno(), self), IN)
        self._logged_in(b"")
        return True

    def _connected(self) -> None:
        """The upstream's connect has ended (EPOLLOUT, or at once: `connected_now`): write
        the early login, or fail as trio's dial does."""
        login = self.login
        assert login is not None
        error = login.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._failed(UpstreamError(Failure.CONNECT, logs.sanitize(os.strerror(error), 80)))
            return
        self.phase = Phase.LOGGING_IN
        self.upstream_at = self.engine.now + self.session.listener.timeouts.upstream_response
        metrics = self.session.runtime.metrics
        metrics.child(metrics.upstream_connect_duration, login.name, "imap").observe(
            time.monotonic() - login.started)
        sent, login.sent = login.sent, b""
        if not self.send(self.upstream, sent):
            self._failed(UpstreamError(Failure.UPSTREAM, "connection closed by upstream"))

    def _upstream_data(self, data: bytes) -> None:
        """The greeting, the ID's reply, the login's verdict: the machine's steps
        (imap_login_machine.py), as trio's login takes them."""
        login = self.login
        assert login is not None
        machine = login.machine
        machine.receive_data(data)
        while not self.done:
            step = machine.next_step()
            if step is NEED_DATA:
                return
            if isinstance(step, Send):
                self.send(self.upstream, step.data)
            elif isinstance(step, Verdict):
                failure = failure_of(step.reply)
                if failure is None:
                    self._logged_in(step.reply.text)
                else:
                    self._failed((failure, step.reply.text))
                return
            elif isinstance(step, Failed):
                self._failed(UpstreamError(step.failure, step.detail))
                return
            elif step is not GREETED:   # Unsendable (literals without LITERAL+, LOGINDISABLED)
                self._to_trio(login.cmd)
                return

    def _logged_in(self, text: bytes) -> None:
        """As log_in and imap_session._authenticate on success; then the relay."""
        login = self.login
        assert login is not None
        session, front, up = self.session, self.front, login.up
        creds = login.request.credentials
        runtime = session.runtime
        reused = self.reused_login is not None
        if not reused:
            runtime.known_greetings.learnt("imap", login.name, login.machine.greeting)
        front.admit()
        session.user = creds.user
        session.login_attempts += 1
        session.upstream = login.name
        metrics = runtime.metrics
        metrics.child(metrics.auth_attempts, "imap", creds.mechanism, auth_result(None)).inc()
        # as log_in: a failure another session recorded since `clean` is cleared (the
        # throttle's lock makes this thread's call safe)
        runtime.throttle.success(creds.user, session.client_ip)
        if logs.enabled():
            if reused:   # (no upstream reply: engine_reuse.py)
                logs.event("auth", **session.log_fields(), upstream=login.name, result="success",
                           mechanism=creds.mechanism, mode="relay", reused=True)
            else:
                logs.event("auth", **session.log_fields(), upstream=login.name,
                           result="success", mechanism=creds.mechanism, mode="relay",
                           upstream_reply=logs.sanitize(text))
        caps = b"CAPABILITY " + b" ".join(relayable(up.capabilities))
        reply = writer.tagged(login.request.tag, b"OK", b"Logged in.", caps)
        self.send(self.client, reply)
        front.meter.completed(command_label("imap", login.cmd.name), b"OK", login.started)
        upstream_parser = up.channel.parser
        leftover = upstream_parser.take_unconsumed()
        pipelined = front.take_unconsumed()
        core = ImapRelayCore(session, client_parser(session, up), upstream_parser,
                             pipelined, self.engine.now)
        relay = ImapEngineSession(core, leftover, self.engine, self.client.conn, self.client.fd,
                                  up.conn, self.upstream.fd)
        if self.secret is not None:   # reuse: on (engine_reuse.py; commands pipelined behind
            if pipelined or leftover:  # the login, or data after its OK, are not judged)
                engine_reuse.count(session, login.name, "unparkable")
            else:
                relay.reuse = engine_reuse.reusable(
                    login.name, engine_reuse.pool_user(session, login.upstream, creds.user),
                    self.secret,
                    self.engine.now if self.reused_login is None else self.reused_login,
                    up.capabilities)
        self._trace("relay")
        self.engine.succeed(self, relay)

    def _greeted(self) -> bool:
        return self.login is not None and self.login.machine.greeted

    def _failed(self, outcome: tuple[Failure, bytes] | UpstreamError) -> None:
        """The login failed at the upstream: trio answers it (DecidedLogin). On a connection
        begun at accept, a failure to connect, a drop before the verdict or a temporary failure
        is not the verdict: trio logs in on a fresh connection (relay_session.warm_or_fresh)."""
        login = self.login
        assert login is not None
        session = self.session
        if session.upstream_early and (outcome[0] is Failure.AUTH_TEMPFAIL
                                       if isinstance(outcome, tuple) else
                                       outcome.failure in (Failure.UPSTREAM, Failure.CONNECT)):
            session.upstream_early = False
            metrics = session.runtime.metrics
            metrics.child(metrics.upstream_early, login.name, "imap", "lost").inc()
            self._to_trio(login.cmd)
            return
        if isinstance(outcome, UpstreamError) and not login.machine.greeted:   # as imap_upstream.connect
            session.runtime.known_greetings.refused("imap", login.name, outcome.detail)
        self._trace("decided")
        self._to_trio(DecidedLogin(login.cmd, login.request, login.started, outcome))

    # -- hand-backs --------------------------------------------------------------------------
    def _close_upstream(self) -> None:
        if self.upstream is not self.client and self.login is not None:
            self.engine.detach(self.upstream)
            self.login.sock.close()

    def _trio_logs_in(self, cmd: events.Command) -> None:
        """A login the engine does not route (its upstream untouched): trio's from the start."""
        self.login = None
        self._trace("trio", force=True)
        self._to_trio(cmd)

    def _trace(self, outcome: str, force: bool = False) -> None:
        """Where a login went (DEBUG): `relay` (done here), `decided` (refused or failed here,
        answered by trio), `trio` (trio asks)."""
        if (force or self.login is not None) and logs.enabled(logging.DEBUG):
            logs.event("relay_engine_login", logging.DEBUG, **self.session.log_fields(),
                       outcome=outcome)

    def _to_trio(self, pending: object) -> None:
        if self.login is not None and not isinstance(pending, DecidedLogin):
            self._trace("trio")
        self._close_upstream()
        self.phase = Phase.PRELOGIN
        self.pending = pending
        self.hand_back()
