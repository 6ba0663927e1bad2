"""What the IMAP and POP3 pre-login dialogues share (imap_front.py, pop3_front.py).

Reading the client's events under the listener's budgets (`preauth_commands`, `bad_commands`,
`auth_failures`), answering a malformed line with the parser's own reply, and counting each
command with its result for metrics and audit. A command's result is the status of the reply it
got; a login's result is known only once the session has asked the upstream (or the gateway its
POP3 server), so the session reports it through `logged_in()` / `login_failed()`.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Protocol, TypeVar

import trio

from ..metrics import command_label
from ..net.conn import Conn
from .channel import Channel, Parser
from .context import CloseSession, CommandMeter, Session
from .failures import Close, limit_of_protocol_error

T = TypeVar("T")


class ProtocolErrorLike(Protocol):
    """proxy.imap.ProtocolError and proxy.pop3.ProtocolError."""

    kind: str
    fatal: bool

    def reply(self) -> bytes: ...


class CommandParser(Parser, Protocol):
    """What a front needs of the protocol's CommandParser."""

    @property
    def buffered(self) -> int: ...

    def take_unconsumed(self) -> bytes: ...

    def expect_line(self) -> None: ...


class Front:
    # set by each protocol
    protocol: str
    TOO_MANY_COMMANDS: bytes   # last words when `preauth_commands` is spent
    TOO_MANY_BAD: bytes        # ... when `bad_commands` is spent
    TOO_MANY_FAILURES: bytes   # ... when `auth_failures` is spent (b"": just close)
    SHUTTING_DOWN: bytes       # ... when the process drains before login
    LOGIN_TIMED_OUT: bytes     # ... when the `login` timeout expires
    PROTOCOL_ERROR: type[Exception]  # the protocol's ProtocolError, NEED_DATA, ConnectionClosed
    NEED_DATA: object
    CLOSED: type

    def __init__(self, session: Session, conn: Conn, parser: CommandParser,
                 unconsumed: bytes = b""):
        self.session = session
        self.channel: Channel[CommandParser] = Channel(conn, parser, self.NEED_DATA, unconsumed)
        self.meter = CommandMeter(session)
        self._status: bytes | None = None  # status of the reply to the current command
        self._pending_login: tuple[str, float] = ("", 0.0)  # awaiting the upstream's verdict
        self.commands = 0
        self.bad = 0
        self.auth_failures = 0
        self.login_deadline: float | None = None   # (set when the engine had the dialogue first)

    @property
    def conn(self) -> Conn:
        return self.channel.conn

    def status_of(self, reply: bytes) -> bytes:
        raise NotImplementedError

    async def greet(self) -> None:
        raise NotImplementedError

    async def until_logged_in(self, log_in: Callable[[], Awaitable[T]],
                              release: Callable[[T], Awaitable[None]]) -> T | None:
        """The pre-login phase of every session (relay and gateway): greet, then `log_in`
        (answer commands until a login succeeds) within the listener's `login` timeout, ended
        early by a drain. Returns what the login produced (the caller owns it), or None when
        the session ends instead: drained (the client got SHUTTING_DOWN) or timed out (the
        client gets LOGIN_TIMED_OUT); a login that completes too late is `release`d. Raises
        CloseSession when a budget or the client ends the session."""
        result: T | None = None
        session = self.session
        drain = session.runtime.drain
        deadline = self.login_deadline
        if deadline is None:
            deadline = trio.current_time() + session.listener.timeouts.login
        with trio.move_on_at(deadline) as scope:

            def drained() -> None:   # called by the process-wide drain, no task per session
                session.close_reason = Close.SHUTDOWN
                scope.cancel()

            drain.subscribe(drained)
            try:
                await self.greet()
                result = await log_in()
            except BaseException:
                if result is not None:
                    await release(result)
                raise
            finally:
                drain.unsubscribe(drained)
        if result is not None and session.close_reason is not Close.SHUTDOWN:
            return result
        if result is not None:
            await release(result)
        if session.close_reason is Close.SHUTDOWN:
            with trio.move_on_after(1):
                await self.conn.send(self.SHUTTING_DOWN)
        else:
            await self.conn.send(self.LOGIN_TIMED_OUT)
            session.end(Close.LOGIN_TIMEOUT)
        return None

    def take_unconsumed(self) -> bytes:
        """What the client pipelined behind its login, for the session that follows."""
        return self.channel.parser.take_unconsumed()

    async def _reply(self, reply: bytes) -> None:
        """Send a reply; its status is the current command's result."""
        self._status = self.status_of(reply)
        await self.conn.send(reply)

    async def _next_event(self) -> object:
        """The next event from the client, answering malformed input in place. Raises
        CloseSession at EOF, on a fatal protocol error or past the BAD budget."""
        while True:
            try:
                event = await self.channel.next_event()
            except self.PROTOCOL_ERROR as exc:
                await self._protocol_error(exc)  # type: ignore[arg-type]
                continue
            if isinstance(event, self.CLOSED):
                raise CloseSession(Close.CLIENT_CLOSED)
            return event

    async def _protocol_error(self, exc: ProtocolErrorLike) -> None:
        self._count_protocol_error(exc)
        if exc.fatal:
            await self.conn.send(exc.reply())  # its last word
            raise CloseSession(Close.PROTOCOL_ERROR) from None
        await self._reply(exc.reply())  # the result of the command it ends, if any
        await self._count_bad()

    def _count_protocol_error(self, exc: ProtocolErrorLike) -> None:
        self.session.runtime.metrics.protocol_errors.labels(self.protocol, exc.kind).inc()
        limit = limit_of_protocol_error(exc.kind)
        if limit is not None:
            self.session.limit_hit(limit)

    async def _answer_refused(self, exc: ProtocolErrorLike) -> None:
        """The client's answer to an upstream's SASL error challenge was refused (too long):
        the login has failed all the same, so its reply follows; a fatal error ends here."""
        if exc.fatal:
            await self._protocol_error(exc)
        self._count_protocol_error(exc)

    def admit(self) -> bool:
        """Count one command; False past the `preauth_commands` budget (the session ends with
        TOO_MANY_COMMANDS then)."""
        self.commands += 1
        self.session.commands += 1
        return self.commands <= self.session.listener.limits.preauth_commands

    def bad_spent(self) -> bool:
        """Count one BAD reply; True when that spends the `bad_commands` budget (the session
        ends with TOO_MANY_BAD then)."""
        self.bad += 1
        return self.bad >= self.session.listener.limits.bad_commands

    async def _command(self, name: bytes, run: Callable[[], Awaitable[T | None]]) -> T | None:
        """Run one command's handler within the command budget, counting its result."""
        if not self.admit():
            await self.conn.send(self.TOO_MANY_COMMANDS)
            raise CloseSession(Close.PREAUTH_COMMANDS)
        label = command_label(self.protocol, name)
        self._status = None
        started = time.monotonic()
        try:
            result = await run()
        finally:
            if self._status is not None:
                self.meter.completed(label, self._status, started)
        if result is not None:  # a login: answered once the upstream has decided
            self._pending_login = (label, started)
        return result

    def login_read(self, name: bytes, started: float) -> None:
        """A login command the relay engine read at `started` (within the budget, checked
        there) is counted as `_command` counts one; its result comes with logged_in() /
        login_failed()."""
        self.admit()
        self._pending_login = (command_label(self.protocol, name), started)

    async def _count_bad(self) -> None:
        if self.bad_spent():
            await self.conn.send(self.TOO_MANY_BAD)
            raise CloseSession(Close.BAD_COMMANDS)

    async def logged_in(self, reply: bytes) -> None:
        """The reply to a successful login (sent by the session)."""
        await self._reply(reply)
        self._login_completed()

    async def login_failed(self, reply: bytes) -> None:
        """The reply to a rejected login; past the `auth_failures` budget the session ends."""
        await self._reply(reply)
        self._login_completed()
        self.auth_failures += 1
        if self.auth_failures >= self.session.listener.limits.auth_failures:
            if self.TOO_MANY_FAILURES:
                await self.conn.send(self.TOO_MANY_FAILURES)
            raise CloseSession(Close.AUTH_FAILURES)

    def _login_completed(self) -> None:
        assert self._status is not None
        self.meter.completed(self._pending_login[0], self._status, self._pending_login[1])
