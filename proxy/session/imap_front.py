"""The client side of an IMAP session before login, answered by the proxy itself.

Theory of operation: the proxy greets, answers CAPABILITY, NOOP, ID, LOGOUT and STARTTLS, and
collects credentials from LOGIN or AUTHENTICATE PLAIN/LOGIN (RFC 3501 6.1-6.2, SASL-IR per
RFC 4959). Every other command gets BAD (RFC 3501 6: commands not valid in this state). Budgets
close the connection: `preauth_commands` commands, `bad_commands` BAD replies and `auth_failures`
failed logins, all under the listener's `login` timeout (a cancel scope held by the caller).
The credentials are handed to the caller, which logs in upstream and answers under the client's tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

from ..config import ProtocolLimits
from ..imap import NEED_DATA, PREAUTH_LIMITS, CommandParser, Limits, ProtocolError, events, writer
from ..net.conn import Conn
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

GREETING_TEXT = b"mailproxy ready."


@lru_cache(maxsize=64)   # one per listener config, not one per connection
def _preauth_limits(limits: ProtocolLimits) -> Limits:
    return Limits(max_line=limits.preauth_max_line, max_literal=limits.preauth_max_literal,
                  max_nonsync_literal=limits.preauth_max_literal,
                  max_depth=PREAUTH_LIMITS.max_depth,
                  # RFC 2971 3.3: the longest ID (about 32 KB), every other line tight
                  max_id_line=limits.id_line_length)


@dataclass
class LoginRequest:
    tag: bytes
    credentials: Credentials


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
        self.limits = _preauth_limits(session.listener.limits)
        super().__init__(session, conn, self._parser(), again or b"")
        self.extra_capabilities = extra_capabilities  # the gateway's, in the greeting
        self.greeted = again is not None

    def _parser(self) -> CommandParser:
        return CommandParser(self.limits, collect_literals=True, parse_args=True)

    def status_of(self, reply: bytes) -> bytes:
        return reply.split(b" ", 2)[1]  # "tag STATUS ..."

    # -- capabilities ------------------------------------------------------------------------
    def capabilities(self) -> bytes:
        caps = [b"IMAP4rev1", b"SASL-IR", b"ID", b"LITERAL+"]
        listener = self.session.listener
        if listener.tls == "starttls" and not self.session.tls:
            caps.append(b"STARTTLS")
        if self.session.plaintext_auth_allowed:
            caps += [b"AUTH=PLAIN", b"AUTH=LOGIN"]
            if listener.oauth2_passthrough:
                caps += [b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER"]
        else:
            caps.append(b"LOGINDISABLED")  # RFC 3501 6.2.3
        return b" ".join(caps + [c for c in self.extra_capabilities if c not in caps])

    async def greet(self) -> None:
        if self.greeted:
            return
        await self.conn.send(b"* OK [CAPABILITY %s] %s\r\n" % (self.capabilities(), GREETING_TEXT))

    # -- the loop ----------------------------------------------------------------------------
    async def next_login(self) -> LoginRequest:
        """Answer commands until the client offers credentials. Raises CloseSession."""
        while True:
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
        handler = _HANDLERS.get(cmd.name)
        if handler is None:
            await self._bad(cmd.tag, b"Command unknown or not allowed before login.")
            return None
        return await handler(self, cmd)

    # -- replies -----------------------------------------------------------------------------
    async def _ok(self, tag: bytes, text: bytes, code: bytes | None = None) -> None:
        await self._reply(writer.tagged(tag, b"OK", text, code))

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

    # -- commands ----------------------------------------------------------------------------
    async def _capability(self, cmd: events.Command) -> None:
        await self.conn.send(b"* CAPABILITY %s\r\n" % self.capabilities())
        await self._ok(cmd.tag, b"Capability completed.")

    async def _noop(self, cmd: events.Command) -> None:
        await self._ok(cmd.tag, b"NOOP completed.")

    async def _logout(self, cmd: events.Command) -> None:
        await self.conn.send(b"* BYE Logging out.\r\n")
        await self._ok(cmd.tag, b"Logout completed.")
        raise CloseSession(Close.CLIENT_LOGOUT)

    async def _id(self, cmd: events.Command) -> None:
        # RFC 2971: the client's fields are not needed; answer with ours.
        await self.conn.send(b'* ID ("name" "mailproxy")\r\n')
        await self._ok(cmd.tag, b"ID completed.")

    async def _starttls(self, cmd: events.Command) -> None:
        if self.session.listener.tls != "starttls" or self.session.tls:
            await self._bad(cmd.tag, b"STARTTLS not available.")
            return
        if client_injection(self.session, self.channel.parser.buffered):
            await self._reply(writer.tagged(cmd.tag, b"BAD", b"Data after STARTTLS refused."))
            raise CloseSession(Close.STARTTLS_INJECTION)
        await self._ok(cmd.tag, b"Begin TLS negotiation now.")
        await upgrade_client(self.session, self.conn)
        self.channel.parser = self._parser()

    async def _refuse_plaintext(self, tag: bytes) -> bool:
        if self.session.plaintext_auth_allowed:
            return False
        await self._reply(writer.tagged(tag, b"NO", b"Plaintext authentication disallowed "
                                           b"on non-secure connections.", b"PRIVACYREQUIRED"))
        if self.session.listener.require_tls:  # a session that logs in without upgrading ends
            await self.conn.send(b"* BYE TLS required: use STARTTLS.\r\n")
            raise CloseSession(Close.TLS_REQUIRED)
        return True

    async def _login(self, cmd: events.Command) -> LoginRequest | None:
        args = [bytes(a) for a in cmd.args if isinstance(a, bytes)]  # strings, not lists
        if len(cmd.args) != 2 or len(args) != 2:
            await self._bad(cmd.tag, b"LOGIN expects a user name and a password.")
            return None
        if await self._refuse_plaintext(cmd.tag):
            return None
        try:
            user = decode_user(args[0])
        except SaslError as exc:
            await self._bad(cmd.tag, str(exc).encode())
            return None
        return LoginRequest(cmd.tag, Credentials(user, args[1], "LOGIN"))

    async def _authenticate(self, cmd: events.Command) -> LoginRequest | None:
        args = [bytes(a) for a in cmd.args if isinstance(a, bytes)]
        if not cmd.args or not isinstance(cmd.args[0], bytes) or len(cmd.args) > 2:
            await self._bad(cmd.tag, b"AUTHENTICATE expects a mechanism.")
            return None
        mechanism = args[0].upper()
        tokens = self.session.listener.oauth2_passthrough
        if mechanism not in (b"PLAIN", b"LOGIN") and not (tokens and mechanism.decode() in PARSERS):
            await self._reply(writer.tagged(cmd.tag, b"NO", b"Unsupported authentication "
                                               b"mechanism.", b"CANNOT"))
            return None
        if await self._refuse_plaintext(cmd.tag):
            return None
        initial = args[1] if len(args) == 2 else None
        try:
            if mechanism.decode() in PARSERS:
                creds = await self._sasl_token(mechanism.decode(), initial)
            else:
                creds = await (self._sasl_plain(initial) if mechanism == b"PLAIN"
                               else self._sasl_login(initial))
        except SaslError as exc:
            await self._bad(cmd.tag, str(exc).encode())
            return None
        except ProtocolError as exc:  # an answer to a prompt was refused (longer than max_line)
            await self._protocol_error(exc.with_context(tag=cmd.tag, fatal=exc.fatal))
            return None
        if creds is None:  # RFC 3501 6.2.2: "*" cancels with BAD
            await self._bad(cmd.tag, b"Authentication cancelled.")
            return None
        return LoginRequest(cmd.tag, creds)

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

    async def _sasl_token(self, mechanism: str, initial: bytes | None) -> Credentials | None:
        message = b64decode(initial) if initial is not None else await self._sasl_line(b"")
        return None if message is None else PARSERS[mechanism](message)

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

    async def _sasl_plain(self, initial: bytes | None) -> Credentials | None:
        message = b64decode(initial) if initial is not None else await self._sasl_line(b"")
        return None if message is None else parse_plain(message)

    async def _sasl_login(self, initial: bytes | None) -> Credentials | None:
        user = b64decode(initial) if initial is not None else await self._sasl_line(
            LOGIN_USER_PROMPT)
        if user is None:
            return None
        password = await self._sasl_line(LOGIN_PASS_PROMPT)
        if password is None:
            return None
        return Credentials(decode_user(user), password, "LOGIN")


_HANDLERS = {
    b"CAPABILITY": ImapFront._capability,
    b"NOOP": ImapFront._noop,
    b"LOGOUT": ImapFront._logout,
    b"ID": ImapFront._id,
    b"STARTTLS": ImapFront._starttls,
    b"LOGIN": ImapFront._login,
    b"AUTHENTICATE": ImapFront._authenticate,
}
