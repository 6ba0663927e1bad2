"""The client side of a POP3 session before login, answered by the proxy itself.

Theory of operation: AUTHORIZATION state (RFC 1939 4) is handled locally: greeting, CAPA
(RFC 2449 5), USER/PASS (RFC 1939 7), AUTH PLAIN/LOGIN with initial response and `*` cancel
(RFC 5034), STLS (RFC 2595 4), NOOP and QUIT. Anything else is `-ERR`, within the
`bad_commands` budget. APOP is not offered: its digest needs the upstream's greeting timestamp,
which the proxy cannot know before routing the user. The credentials go to the caller, which
logs in upstream and answers the client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import logs
from ..pop3 import NEED_DATA, CommandParser, Limits, ProtocolError, events, writer
from ..net.conn import Conn
from ..metrics import command_label
from .context import CloseSession, CommandMeter, Session
from .starttls import client_injection, upgrade_client
from .sasl import LOGIN_PASS_PROMPT, LOGIN_USER_PROMPT, Credentials, SaslError, b64decode
from .sasl import decode_user, parse_plain

GREETING = b"+OK mailproxy ready.\r\n"


@dataclass
class Pop3Login:
    credentials: Credentials


class Pop3Front:
    def __init__(self, session: Session, conn: Conn):
        self.session = session
        self.conn = conn
        lim = session.listener.limits
        self.limits = Limits(max_command_line=min(lim.preauth_max_line, lim.pop3_max_command_line))
        self.parser = CommandParser(self.limits)
        self.meter = CommandMeter(session)
        self._status: bytes | None = None  # status of the reply to the current command
        self._login: tuple[str, float] = ("PASS", 0.0)  # the login awaiting the upstream
        self.user: str | None = None
        self.commands = 0
        self.bad = 0
        self.auth_failures = 0

    def capabilities(self) -> list[bytes]:
        """RFC 2449 CAPA in AUTHORIZATION state."""
        caps = [b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES", b"AUTH-RESP-CODE"]
        if self.session.plaintext_auth_allowed:
            caps += [b"USER", b"SASL PLAIN LOGIN"]
        if self.session.listener.tls == "starttls" and not self.session.tls:
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION mailproxy")
        return caps

    async def greet(self) -> None:
        await self.conn.send(GREETING)

    async def next_login(self) -> Pop3Login:
        while True:
            event = await self._next_event()
            if not isinstance(event, events.Command):
                raise CloseSession("protocol_error")
            self.commands += 1
            self.session.commands += 1
            if self.commands > self.session.listener.limits.preauth_commands:
                self._limit("preauth_commands")
                await self._reply(writer.err(b"Too many commands before login.", b"SYS/PERM"))
                raise CloseSession("preauth_commands")
            handler = _HANDLERS.get(event.name)
            if handler is None:
                await self._err(b"Unknown command or not allowed before login.")
                continue
            self._status = None
            started = time.monotonic()
            try:
                login = await handler(self, event)
            finally:
                if self._status is not None:
                    self.meter.completed(command_label("pop3", event.name), self._status, started)
            if login is not None:  # answered once the upstream has decided
                self._login = (command_label("pop3", event.name), started)
                return login

    async def _next_event(self):
        while True:
            try:
                event = self.parser.next_event()
            except ProtocolError as exc:
                self.session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
                if exc.kind == "line_too_long":
                    self._limit("line_length")
                await self.conn.send(exc.reply())
                if exc.fatal:
                    raise CloseSession("protocol_error") from None
                await self._count_bad()
                continue
            if event is NEED_DATA:
                self.parser.receive_data(await self.conn.receive())
                continue
            if isinstance(event, events.ConnectionClosed):
                raise CloseSession("client_closed")
            return event

    async def _reply(self, reply: bytes) -> None:
        """Send a reply; its status is the command's result for metrics and audit."""
        self._status = b"+OK" if reply.startswith(b"+OK") else b"-ERR"
        await self.conn.send(reply)

    async def _err(self, text: bytes, code: bytes | None = None) -> None:
        await self._reply(writer.err(text, code))
        await self._count_bad()

    async def _count_bad(self) -> None:
        self.bad += 1
        if self.bad >= self.session.listener.limits.bad_commands:
            self._limit("bad_commands")
            await self._reply(writer.err(b"Too many invalid commands.", b"SYS/PERM"))
            raise CloseSession("bad_commands")

    def _limit(self, name: str) -> None:
        self.session.runtime.metrics.limit_hits.labels(name).inc()
        logs.event("limit_hit", **self.session.log_fields(), limit=name)

    async def logged_in(self, reply: bytes) -> None:
        await self._reply(reply)
        self.meter.completed(self._login[0], self._status, self._login[1])

    async def auth_failed(self, reply: bytes) -> None:
        await self._reply(reply)
        self.meter.completed(self._login[0], self._status, self._login[1])
        self.user = None
        self.auth_failures += 1
        if self.auth_failures >= self.session.listener.limits.auth_failures:
            self._limit("auth_failures")
            raise CloseSession("auth_failures")

    # -- commands ----------------------------------------------------------------------------
    async def _capa(self, cmd: events.Command) -> None:
        await self._reply(writer.ok(b"Capability list follows") +
                             writer.multiline(b"".join(c + b"\r\n" for c in self.capabilities())))

    async def _noop(self, cmd: events.Command) -> None:
        await self._reply(writer.ok())

    async def _quit(self, cmd: events.Command) -> None:
        await self._reply(writer.ok(b"Logging out."))
        raise CloseSession("client_logout")

    async def _stls(self, cmd: events.Command) -> None:
        if self.session.listener.tls != "starttls" or self.session.tls:
            await self._err(b"STLS not available.")
            return
        if client_injection(self.session, self.parser.buffered):
            await self._reply(writer.err(b"Data after STLS refused."))
            raise CloseSession("starttls_injection")
        await self._reply(writer.ok(b"Begin TLS negotiation now."))
        await upgrade_client(self.session, self.conn)
        self.user = None
        self.parser = CommandParser(self.limits)

    async def _refuse_plaintext(self) -> bool:
        if self.session.plaintext_auth_allowed:
            return False
        # RFC 2595 / RFC 3206 4: [AUTH] tells the client that authentication is the problem.
        await self._reply(writer.err(b"Plaintext authentication disallowed on non-secure "
                                        b"connections.", b"AUTH"))
        if self.session.listener.require_tls:  # a session that logs in without upgrading ends
            raise CloseSession("tls_required")
        return True

    async def _user(self, cmd: events.Command) -> None:
        if len(cmd.args) != 1:
            await self._err(b"USER expects a name.")
            return
        if await self._refuse_plaintext():
            return
        try:
            self.user = decode_user(cmd.args[0])
        except SaslError as exc:
            await self._err(str(exc).encode())
            return
        await self._reply(writer.ok())

    async def _pass(self, cmd: events.Command) -> Pop3Login | None:
        if self.user is None:
            await self._err(b"USER first.")
            return None
        if len(cmd.args) != 1:
            await self._err(b"PASS expects a password.")
            return None
        user, self.user = self.user, None
        return Pop3Login(Credentials(user, cmd.args[0], "USER"))

    async def _auth(self, cmd: events.Command) -> Pop3Login | None:
        if not cmd.args:  # the mechanism list (RFC 1734 practice)
            await self._reply(writer.ok() + writer.multiline(b"PLAIN\r\nLOGIN\r\n"))
            return None
        mechanism = cmd.args[0].upper()
        if mechanism not in (b"PLAIN", b"LOGIN") or len(cmd.args) > 2:
            await self._err(b"Unsupported authentication mechanism.")
            return None
        if await self._refuse_plaintext():
            return None
        initial = cmd.args[1] if len(cmd.args) == 2 else None
        try:
            if mechanism == b"PLAIN":
                message = b64decode(initial) if initial is not None else await self._sasl(b"")
                creds = None if message is None else parse_plain(message)
            else:
                creds = await self._sasl_login(initial)
        except SaslError as exc:
            await self._err(str(exc).encode())
            return None
        if creds is None:  # RFC 5034 4: "*" cancels
            await self._reply(writer.err(b"Authentication cancelled."))
            return None
        return Pop3Login(creds)

    async def _sasl(self, challenge: bytes) -> bytes | None:
        await self.conn.send(writer.continuation(challenge))
        self.parser.expect_line()
        event = await self._next_event()
        if not isinstance(event, events.RawLine):
            raise CloseSession("protocol_error")
        return None if event.data.strip() == b"*" else b64decode(event.data.strip())

    async def _sasl_login(self, initial: bytes | None) -> Credentials | None:
        user = b64decode(initial) if initial is not None else await self._sasl(LOGIN_USER_PROMPT)
        if user is None:
            return None
        password = await self._sasl(LOGIN_PASS_PROMPT)
        return None if password is None else Credentials(decode_user(user), password, "LOGIN")


_HANDLERS = {
    b"CAPA": Pop3Front._capa,
    b"NOOP": Pop3Front._noop,
    b"QUIT": Pop3Front._quit,
    b"STLS": Pop3Front._stls,
    b"USER": Pop3Front._user,
    b"PASS": Pop3Front._pass,
    b"AUTH": Pop3Front._auth,
}
