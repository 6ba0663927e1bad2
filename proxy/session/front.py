"""What the IMAP and POP3 pre-login dialogues share (imap_front.py, pop3_front.py).

Reading the client's events under the listener's budgets (`preauth_commands`, `bad_commands`,
`auth_failures`), answering a malformed line with the parser's own reply, and counting each
command with its result for metrics and audit. A command's result is the status of the reply it
got; a login's result is known only once the session has asked the upstream, so the session
reports it through `logged_in()` / `login_failed()`.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from .. import logs
from ..metrics import command_label
from ..net.conn import Conn
from .context import CloseSession, CommandMeter, Session

_LIMIT_OF_ERROR = {"line_too_long": "line_length", "literal_too_big": "literal_size",
                   "nonsync_literal_too_big": "literal_size"}


class Front:
    # set by each protocol
    protocol: str
    TOO_MANY_COMMANDS: bytes   # last words when `preauth_commands` is spent
    TOO_MANY_BAD: bytes        # ... when `bad_commands` is spent
    TOO_MANY_FAILURES: bytes   # ... when `auth_failures` is spent (b"": just close)
    parser: Any                # the protocol's sans-IO CommandParser (replaced after STARTTLS)
    PROTOCOL_ERROR: type[Exception]  # and the protocol's NEED_DATA and ConnectionClosed
    NEED_DATA: object
    CLOSED: type

    def __init__(self, session: Session, conn: Conn):
        self.session = session
        self.conn = conn
        self.meter = CommandMeter(session)
        self._status: bytes | None = None  # status of the reply to the current command
        self._login: tuple[str, float] = ("", 0.0)  # the login awaiting the upstream's verdict
        self.commands = 0
        self.bad = 0
        self.auth_failures = 0

    def status_of(self, reply: bytes) -> bytes:
        raise NotImplementedError

    async def _reply(self, reply: bytes) -> None:
        """Send a reply; its status is the current command's result."""
        self._status = self.status_of(reply)
        await self.conn.send(reply)

    async def _next_event(self) -> Any:
        """The next event from the client, answering malformed input in place. Raises
        CloseSession at EOF, on a fatal protocol error or past the BAD budget."""
        while True:
            try:
                event = self.parser.next_event()
            except self.PROTOCOL_ERROR as exc:
                await self._protocol_error(exc)
                continue
            if event is self.NEED_DATA:
                self.parser.receive_data(await self.conn.receive())
                continue
            if isinstance(event, self.CLOSED):
                raise CloseSession("client_closed")
            return event

    async def _protocol_error(self, exc: Any) -> None:
        self.session.runtime.metrics.protocol_errors.labels(self.protocol, exc.kind).inc()
        if exc.kind in _LIMIT_OF_ERROR:
            self._limit(_LIMIT_OF_ERROR[exc.kind])
        await self.conn.send(exc.reply())  # a fatal error's reply is its last word
        if exc.fatal:
            raise CloseSession("protocol_error") from None
        await self._count_bad()

    async def _command(self, name: bytes, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command's handler within the command budget, counting its result."""
        self.commands += 1
        self.session.commands += 1
        if self.commands > self.session.listener.limits.preauth_commands:
            self._limit("preauth_commands")
            await self.conn.send(self.TOO_MANY_COMMANDS)
            raise CloseSession("preauth_commands")
        label = command_label(self.protocol, name)
        self._status = None
        started = time.monotonic()
        try:
            result = await run()
        finally:
            if self._status is not None:
                self.meter.completed(label, self._status, started)
        if result is not None:  # a login: answered once the upstream has decided
            self._login = (label, started)
        return result

    async def _count_bad(self) -> None:
        self.bad += 1
        if self.bad >= self.session.listener.limits.bad_commands:
            self._limit("bad_commands")
            await self.conn.send(self.TOO_MANY_BAD)
            raise CloseSession("bad_commands")

    def _limit(self, name: str) -> None:
        self.session.runtime.metrics.limit_hits.labels(name).inc()
        logs.event("limit_hit", **self.session.log_fields(), limit=name)

    async def logged_in(self, reply: bytes) -> None:
        """The reply to a successful login (sent by the session)."""
        await self._reply(reply)
        self.meter.completed(self._login[0], self._status, self._login[1])

    async def login_failed(self, reply: bytes) -> None:
        """The reply to a rejected login; past the `auth_failures` budget the session ends."""
        await self._reply(reply)
        self.meter.completed(self._login[0], self._status, self._login[1])
        self.auth_failures += 1
        if self.auth_failures >= self.session.listener.limits.auth_failures:
            self._limit("auth_failures")
            if self.TOO_MANY_FAILURES:
                await self.conn.send(self.TOO_MANY_FAILURES)
            raise CloseSession("auth_failures")
