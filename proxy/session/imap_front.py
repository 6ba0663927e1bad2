"""The client side of an IMAP session before login, answered by the proxy itself (on trio).

Theory of operation: what each pre-login command gets is decided by the sans-IO machine in
imap_prelogin.py (shared with the relay engine's thread); this front does its I/O: it greets,
writes the machine's answers, runs the STARTTLS handshake and the SASL continuation dialogues
(AUTHENTICATE without an initial response, LOGIN's prompts), and hands the credentials to the
caller, which logs in upstream and answers under the client's tag. Budgets close the
connection: `preauth_commands` commands, `bad_commands` BAD replies and `auth_failures` failed
logins, all under the listener's `login` timeout (a cancel scope held by the caller; front.py).
"""

from __future__ import annotations

from functools import lru_cache, partial

from ..config import ProtocolLimits
from ..imap import NEED_DATA, PREAUTH_LIMITS, CommandParser, Limits, ProtocolError, events, writer
from ..net.conn import Conn
from ..routing.answers import Refusal
from .context import CloseSession, Session
from .failures import Close, Failure
from .front import Front
from .imap_prelogin import Answer, ImapPrelogin, LoginRequest, Then, sasl_credentials
from .sasl import (
    LOGIN_PASS_PROMPT,
    LOGIN_USER_PROMPT,
    Credentials,
    SaslError,
    b64decode,
    decode_user,
)
from .starttls import upgrade_client

__all__ = ["ImapFront", "LoginRequest", "preauth_limits"]


@lru_cache(maxsize=64)   # one per listener config, not one per connection
def preauth_limits(limits: ProtocolLimits) -> Limits:
    return Limits(max_line=limits.preauth_max_line, max_literal=limits.preauth_max_literal,
                  max_nonsync_literal=limits.preauth_max_literal,
                  max_depth=PREAUTH_LIMITS.max_depth,
                  # RFC 2971 3.3: the longest ID (about 32 KB), every other line tight
                  max_id_line=limits.id_line_length)


class ImapFront(Front):
    """Pre-authentication dialogue on one client connection."""

    protocol = "imap"
    PROTOCOL_ERROR, NEED_DATA, CLOSED = ProtocolError, NEED_DATA, events.ConnectionClosed
    TOO_MANY_COMMANDS = b"* BYE Too many commands before login.\r\n"
    TOO_MANY_BAD = b"* BYE Too many invalid commands.\r\n"
    TOO_MANY_FAILURES = b"* BYE Too many authentication failures.\r\n"
    SHUTTING_DOWN = b"* BYE Server shutting down.\r\n"
    LOGIN_TIMED_OUT = b"* BYE Login timeout.\r\n"

    def __init__(self, session: Session, conn: Conn, extra_capabilities: tuple[bytes, ...] = (),
                 *, again: bytes | None = None):
        """`again`: the connection comes back after UNAUTHENTICATE (RFC 8437 3) with these
        pipelined bytes; no greeting is sent then."""
        self.limits = preauth_limits(session.listener.limits)
        super().__init__(session, conn, self._parser(), again or b"")
        self.machine = ImapPrelogin(session, extra_capabilities)  # (the gateway's capabilities)
        self.greeted = again is not None

    def _parser(self) -> CommandParser:
        return CommandParser(self.limits, collect_literals=True, parse_args=True)

    def status_of(self, reply: bytes) -> bytes:
        return reply.split(b" ", 2)[1]  # "tag STATUS ..."

    # -- capabilities ------------------------------------------------------------------------
    def capabilities(self) -> bytes:
        return self.machine.capabilities()

    async def greet(self) -> None:
        if self.greeted:
            return
        await self.conn.send(self.machine.greeting())

    # -- the loop ----------------------------------------------------------------------------
    async def next_login(self, pending: object = None) -> LoginRequest:
        """Answer commands until the client offers credentials. `pending`: an event (or the
        parser's ProtocolError) already read by the relay engine, which hands the session over
        at it (engine_prelogin.py). Raises CloseSession."""
        while True:
            if isinstance(pending, ProtocolError):
                await self._protocol_error(pending)
                pending = None
            if pending is not None:
                event, pending = pending, None
            else:
                event = await self._next_event()
            if isinstance(event, events.LiteralStart):
                if event.synchronizing:
                    await self.conn.send(writer.continuation(b"Ready for literal data"))
                continue
            if isinstance(event, events.CommandStart):
                continue
            if not isinstance(event, events.Command):
                raise CloseSession(Close.PROTOCOL_ERROR)
            request = await self._command(event.name, partial(self._dispatch, event))
            if request is not None:
                return request

    async def _dispatch(self, cmd: events.Command) -> LoginRequest | None:
        answer = self.machine.answer(cmd, self.channel.parser.buffered)
        await self.answer(answer)
        if answer.then is Then.TLS:
            await upgrade_client(self.session, self.conn)
            self.channel.parser = self._parser()
        elif answer.then is Then.SASL:
            return await self._sasl(cmd.tag, *answer.sasl)
        return answer.login

    async def answer(self, answer: Answer) -> None:
        """Write an Answer of the machine, count it, and end the session where it says so."""
        if answer.untagged:
            await self.conn.send(answer.untagged)
        if answer.tagged:
            await self._reply(answer.tagged)
        if answer.bad:
            await self._count_bad()
        if answer.last_words:
            await self.conn.send(answer.last_words)
        if answer.close is not None:
            raise CloseSession(answer.close)

    # -- replies -----------------------------------------------------------------------------
    async def _bad(self, tag: bytes, text: bytes) -> None:
        await self._reply(writer.tagged(tag, b"BAD", text))
        await self._count_bad()

    async def auth_failed(self, tag: bytes, failure: Failure) -> None:
        """Called by the session after a rejected login: the failure's reply under the
        client's tag, and the end of the session past the `auth_failures` budget."""
        code, text = failure.imap_reply
        await self.login_failed(writer.tagged(tag, b"NO", text, code))

    async def auth_refused(self, tag: bytes, refusal: Refusal) -> None:
        """A lookup's refusal: its text under the client's tag (after our response code unless
        it brings its own); without `wait` the session ends after it, as nginx does."""
        failure = Failure.AUTH_TEMPFAIL if refusal.temporary else Failure.AUTH_REJECTED
        text = refusal.message.encode()
        code = None if text.startswith(b"[") else failure.imap_reply[0]
        await self.login_failed(writer.tagged(tag, b"NO", text, code))
        if refusal.wait is None:
            raise CloseSession(Close.AUTH_REFUSED)

    # -- SASL continuations (RFC 3501 6.2.2) ---------------------------------------------------
    async def _sasl(self, tag: bytes, mechanism: str, initial: bytes | None) -> LoginRequest | None:
        """An AUTHENTICATE whose credentials need the client's answers to our prompts."""
        try:
            creds = await (self._sasl_login(initial) if mechanism == "LOGIN"
                           else self._sasl_message(mechanism))
        except SaslError as exc:
            await self._bad(tag, str(exc).encode())
            return None
        except ProtocolError as exc:  # an answer to a prompt was refused (longer than max_line)
            await self._protocol_error(exc.with_context(tag=tag, fatal=exc.fatal))
            return None
        if creds is None:  # RFC 3501 6.2.2: "*" cancels with BAD
            await self._bad(tag, b"Authentication cancelled.")
            return None
        return LoginRequest(tag, creds)

    async def _sasl_line(self, challenge: bytes) -> bytes | None:
        """The client's answer to a continuation prompt. Raises the parser's ProtocolError for
        an overlong answer: the AUTHENTICATE ends with the caller's tagged BAD (RFC 3501 7.1.3)
        and, as the parser skips the rest of that line, the session goes on (a fatal error, the
        line going on past the resync budget, ends it with BYE as anywhere else)."""
        await self.conn.send(writer.continuation(challenge))
        self.channel.parser.expect_line()
        event = await self.channel.next_event()
        if isinstance(event, events.ConnectionClosed):
            raise CloseSession(Close.CLIENT_CLOSED)
        if not isinstance(event, events.RawLine):  # (nothing else follows expect_line())
            raise CloseSession(Close.PROTOCOL_ERROR)
        return None if event.data == b"*" else b64decode(event.data)

    async def _sasl_message(self, mechanism: str) -> Credentials | None:
        """PLAIN or a token mechanism without an initial response: one empty prompt."""
        message = await self._sasl_line(b"")
        return None if message is None else sasl_credentials(mechanism, message)

    async def sasl_challenge(self, challenge: bytes) -> bool:
        """Relay an upstream's SASL error challenge (RFC 7628 3.2.2: `+ base64(json)`) and read
        the client's answer; False when the client cancelled with `*`."""
        try:
            return await self._sasl_line(challenge) is not None
        except SaslError:  # whatever the client answers, the login has failed
            return True
        except ProtocolError as exc:
            await self._answer_refused(exc)
            return True

    async def _sasl_login(self, initial: bytes | None) -> Credentials | None:
        user = b64decode(initial) if initial is not None else await self._sasl_line(
            LOGIN_USER_PROMPT)
        if user is None:
            return None
        password = await self._sasl_line(LOGIN_PASS_PROMPT)
        if password is None:
            return None
        return Credentials(decode_user(user), password, "LOGIN")
