"""The client side of a POP3 session before login, answered by the proxy itself.

Theory of operation: AUTHORIZATION state (RFC 1939 4) is handled locally: greeting, CAPA
(RFC 2449 5), USER/PASS (RFC 1939 7), AUTH PLAIN/LOGIN with initial response and `*` cancel
(RFC 5034), STLS (RFC 2595 4), NOOP and QUIT. Anything else is `-ERR`, within the
`bad_commands` budget. APOP is not offered: its digest needs the upstream's greeting timestamp,
which the proxy cannot know before routing the user. The credentials go to the caller, which
logs in upstream and answers the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..net.conn import Conn
from ..pop3 import NEED_DATA, CommandParser, Limits, ProtocolError, events, writer
from ..routing.answers import Refusal
from .context import CloseSession, Session
from .failures import Close, Failure
from .front import Front
from .oauth_sasl import PARSERS
from .sasl import (
    LOGIN_PASS_PROMPT,
    LOGIN_USER_PROMPT,
    Credentials,
    SaslError,
    b64decode,
    decode_user,
    parse_plain,
)
from .starttls import client_injection, upgrade_client

GREETING = b"+OK mailproxy ready.\r\n"


@dataclass
class Pop3Login:
    credentials: Credentials


class Pop3Front(Front):
    protocol = "pop3"
    PROTOCOL_ERROR, NEED_DATA, CLOSED = ProtocolError, NEED_DATA, events.ConnectionClosed
    TOO_MANY_COMMANDS = writer.err(b"Too many commands before login.", b"SYS/PERM")
    TOO_MANY_BAD = writer.err(b"Too many invalid commands.", b"SYS/PERM")
    TOO_MANY_FAILURES = b""  # POP3 has no unsolicited goodbye: the connection just closes
    SHUTTING_DOWN = writer.err(b"Server shutting down.", b"SYS/TEMP")
    LOGIN_TIMED_OUT = writer.err(b"Login timeout.")

    def __init__(self, session: Session, conn: Conn):
        lim = session.listener.limits
        self.limits = Limits(max_command_line=min(lim.preauth_max_line, lim.pop3_max_command_line))
        super().__init__(session, conn, CommandParser(self.limits))
        self.user: str | None = None

    def status_of(self, reply: bytes) -> bytes:
        return b"+OK" if reply.startswith(b"+OK") else b"-ERR"

    def capabilities(self) -> list[bytes]:
        """RFC 2449 CAPA in AUTHORIZATION state."""
        caps = [b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES", b"AUTH-RESP-CODE"]
        if self.session.plaintext_auth_allowed:
            caps += [b"USER", b"SASL PLAIN LOGIN" + (b" XOAUTH2 OAUTHBEARER" if
                                                       self.session.listener.oauth2_passthrough else b"")]
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
                raise CloseSession(Close.PROTOCOL_ERROR)
            login = await self._command(event.name, partial(self._dispatch, event))
            if login is not None:
                return login

    async def _dispatch(self, cmd: events.Command) -> Pop3Login | None:
        handler = _HANDLERS.get(cmd.name)
        if handler is None:
            await self._err(b"Unknown command or not allowed before login.")
            return None
        return await handler(self, cmd)

    async def _err(self, text: bytes, code: bytes | None = None) -> None:
        await self._reply(writer.err(text, code))
        await self._count_bad()

    async def auth_failed(self, failure: Failure) -> None:
        """After a rejected login: the failure's -ERR, and the end past the budget."""
        self.user = None
        code, text = failure.pop3_reply
        await self.login_failed(writer.err(text, code))

    async def auth_refused(self, refusal: Refusal) -> None:
        """A lookup's refusal: its text (after our response code unless it brings its own);
        without `wait` the session ends after it, as nginx does."""
        self.user = None
        failure = Failure.AUTH_TEMPFAIL if refusal.temporary else Failure.AUTH_REJECTED
        text = refusal.message.encode()
        await self.login_failed(writer.err(text, None if text.startswith(b"[")
                                           else failure.pop3_reply[0]))
        if refusal.wait is None:
            raise CloseSession(Close.AUTH_REFUSED)

    # -- commands ----------------------------------------------------------------------------
    async def _capa(self, cmd: events.Command) -> None:
        await self._reply(writer.ok(b"Capability list follows") +
                             writer.multiline(b"".join(c + b"\r\n" for c in self.capabilities())))

    async def _noop(self, cmd: events.Command) -> None:
        await self._reply(writer.ok())

    async def _quit(self, cmd: events.Command) -> None:
        await self._reply(writer.ok(b"Logging out."))
        raise CloseSession(Close.CLIENT_LOGOUT)

    async def _stls(self, cmd: events.Command) -> None:
        if self.session.listener.tls != "starttls" or self.session.tls:
            await self._err(b"STLS not available.")
            return
        if client_injection(self.session, self.channel.parser.buffered):
            await self._reply(writer.err(b"Data after STLS refused."))
            raise CloseSession(Close.STARTTLS_INJECTION)
        await self._reply(writer.ok(b"Begin TLS negotiation now."))
        await upgrade_client(self.session, self.conn)
        self.user = None
        self.channel.parser = CommandParser(self.limits)

    async def _refuse_plaintext(self) -> bool:
        if self.session.plaintext_auth_allowed:
            return False
        # RFC 2595 / RFC 3206 4: [AUTH] tells the client that authentication is the problem.
        await self._reply(writer.err(b"Plaintext authentication disallowed on non-secure "
                                        b"connections.", b"AUTH"))
        if self.session.listener.require_tls:  # a session that logs in without upgrading ends
            raise CloseSession(Close.TLS_REQUIRED)
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
            names = b"PLAIN\r\nLOGIN\r\n" + (b"XOAUTH2\r\nOAUTHBEARER\r\n" if
                                               self.session.listener.oauth2_passthrough else b"")
            await self._reply(writer.ok() + writer.multiline(names))
            return None
        mechanism = cmd.args[0].upper()
        tokens = self.session.listener.oauth2_passthrough and mechanism.decode() in PARSERS
        if (mechanism not in (b"PLAIN", b"LOGIN") and not tokens) or len(cmd.args) > 2:
            await self._err(b"Unsupported authentication mechanism.")
            return None
        if await self._refuse_plaintext():
            return None
        initial = cmd.args[1] if len(cmd.args) == 2 else None
        try:
            if tokens:
                message = b64decode(initial) if initial is not None else await self._sasl(b"")
                creds = None if message is None else PARSERS[mechanism.decode()](message)
            elif mechanism == b"PLAIN":
                message = b64decode(initial) if initial is not None else await self._sasl(b"")
                creds = None if message is None else parse_plain(message)
            else:
                creds = await self._sasl_login(initial)
        except SaslError as exc:
            await self._err(str(exc).encode())
            return None
        except ProtocolError as exc:  # an answer to a prompt was refused (too long): -ERR
            await self._protocol_error(exc)
            return None
        if creds is None:  # RFC 5034 4: "*" cancels
            await self._reply(writer.err(b"Authentication cancelled."))
            return None
        return Pop3Login(creds)

    async def auth_cancelled(self) -> None:
        """The client cancelled a token login's error challenge with `*` (RFC 5034 4)."""
        self.user = None
        await self.login_failed(writer.err(b"Authentication cancelled."))

    async def sasl_challenge(self, challenge: bytes) -> bool:
        """Relay an upstream's SASL error challenge and read the client's answer; False when
        the client cancelled with `*`."""
        try:
            return await self._sasl(challenge) is not None
        except SaslError:  # whatever the client answers, the login has failed
            return True
        except ProtocolError as exc:
            await self._answer_refused(exc)
            return True

    async def _sasl(self, challenge: bytes) -> bytes | None:
        """The client's answer to a continuation prompt. Raises the parser's ProtocolError for
        an overlong answer: the AUTH ends with -ERR and, as the parser skips the rest of that
        line, the session goes on (RFC 5034 4)."""
        await self.conn.send(writer.continuation(challenge))
        self.channel.parser.expect_line()
        event = await self.channel.next_event()
        if isinstance(event, events.ConnectionClosed):
            raise CloseSession(Close.CLIENT_CLOSED)
        if not isinstance(event, events.RawLine):  # (nothing else follows expect_line())
            raise CloseSession(Close.PROTOCOL_ERROR)
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
