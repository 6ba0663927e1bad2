"""The IMAP pre-login dialogue as a sans-IO machine: a command in, the proxy's answer out.

Theory of operation: before login the proxy answers CAPABILITY, NOOP, ID, LOGOUT and STARTTLS
itself and collects credentials from LOGIN or AUTHENTICATE (RFC 3501 6.1-6.2, SASL-IR per RFC
4959); every other command gets BAD (RFC 3501 6: not valid in this state). `ImapPrelogin.answer`
decides what one command gets, without I/O and without a clock, as an `Answer`: the lines to
write, whether the BAD counts against the `bad_commands` budget, the credentials of a login,
the end of the session, or one of the two steps only a caller with I/O can take (`TLS`: the
handshake after STARTTLS's OK; `SASL`: an AUTHENTICATE that needs a continuation dialogue).
Its callers are the pre-login front on trio (imap_front.py) and the relay engine's thread,
which hands a session to trio at either of those two steps. Budgets, command metrics and the
`login` timeout stay with the callers (front.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..imap import events, writer
from .context import Session
from .failures import Close
from .oauth_sasl import PARSERS
from .sasl import Credentials, SaslError, b64decode, decode_user, parse_plain
from .starttls import client_injection

__all__ = ["Answer", "ImapPrelogin", "LoginRequest", "Then", "sasl_credentials"]

GREETING_TEXT = b"mailproxy ready."
BYE_LOGOUT = b"* BYE Logging out.\r\n"
BYE_TLS_REQUIRED = b"* BYE TLS required: use STARTTLS.\r\n"


@dataclass
class LoginRequest:
    tag: bytes
    credentials: Credentials


class Then(enum.Enum):
    """What the caller does after writing an Answer's lines."""

    NEXT = "next"     # read the next command
    CLOSE = "close"   # the session ends (`Answer.close`)
    LOGIN = "login"   # log in with `Answer.login`
    TLS = "tls"       # STARTTLS was accepted: the handshake, then a fresh parser (RFC 3501 6.2.1)
    SASL = "sasl"     # AUTHENTICATE `Answer.sasl` = (mechanism, initial response) needs prompts


@dataclass(frozen=True, slots=True)
class Answer:
    """`untagged` goes first; `tagged` is the command's result (its status is the command's
    status for metrics; b"" when the SASL dialogue will give it); `bad` counts it against the
    `bad_commands` budget; `last_words` follow, then the session ends with `close`."""

    then: Then = Then.NEXT
    untagged: bytes = b""
    tagged: bytes = b""
    bad: bool = False
    last_words: bytes = b""
    close: Close | None = None
    login: LoginRequest | None = None
    sasl: tuple[str, bytes | None] = ("", None)


def _bad(tag: bytes, text: bytes) -> Answer:
    return Answer(tagged=writer.tagged(tag, b"BAD", text), bad=True)


def _ok(tag: bytes, text: bytes, untagged: bytes = b"") -> Answer:
    return Answer(untagged=untagged, tagged=writer.tagged(tag, b"OK", text))


def sasl_credentials(mechanism: str, message: bytes) -> Credentials:
    """The credentials in a whole SASL message of PLAIN or a token mechanism. Raises SaslError."""
    return parse_plain(message) if mechanism == "PLAIN" else PARSERS[mechanism](message)


class ImapPrelogin:
    """The pre-login answers of one session; `extra_capabilities` are the gateway's."""

    __slots__ = ("session", "extra_capabilities")

    def __init__(self, session: Session, extra_capabilities: tuple[bytes, ...] = ()):
        self.session = session
        self.extra_capabilities = extra_capabilities

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

    def greeting(self) -> bytes:
        return b"* OK [CAPABILITY %s] %s\r\n" % (self.capabilities(), GREETING_TEXT)

    def answer(self, cmd: events.Command, buffered: int) -> Answer:
        """What `cmd` gets; `buffered` is what the client sent after it (STARTTLS refuses it)."""
        handler = _HANDLERS.get(cmd.name)
        if handler is None:
            return _bad(cmd.tag, b"Command unknown or not allowed before login.")
        return handler(self, cmd, buffered)

    # -- commands ----------------------------------------------------------------------------
    def _capability(self, cmd: events.Command, _: int) -> Answer:
        return _ok(cmd.tag, b"Capability completed.", b"* CAPABILITY %s\r\n" % self.capabilities())

    def _noop(self, cmd: events.Command, _: int) -> Answer:
        return _ok(cmd.tag, b"NOOP completed.")

    def _logout(self, cmd: events.Command, _: int) -> Answer:
        return Answer(Then.CLOSE, BYE_LOGOUT, writer.tagged(cmd.tag, b"OK", b"Logout completed."),
                      close=Close.CLIENT_LOGOUT)

    def _id(self, cmd: events.Command, _: int) -> Answer:
        # RFC 2971: the client's fields are not needed; answer with ours.
        return _ok(cmd.tag, b"ID completed.", b'* ID ("name" "mailproxy")\r\n')

    def _starttls(self, cmd: events.Command, buffered: int) -> Answer:
        if self.session.listener.tls != "starttls" or self.session.tls:
            return _bad(cmd.tag, b"STARTTLS not available.")
        if client_injection(self.session, buffered):   # RFC 2595 3.1, CVE-2011-0411
            return Answer(Then.CLOSE, tagged=writer.tagged(
                cmd.tag, b"BAD", b"Data after STARTTLS refused."), close=Close.STARTTLS_INJECTION)
        return Answer(Then.TLS, tagged=writer.tagged(cmd.tag, b"OK", b"Begin TLS negotiation now."))

    def _plaintext_refused(self, tag: bytes) -> Answer | None:
        if self.session.plaintext_auth_allowed:
            return None
        refused = writer.tagged(tag, b"NO", b"Plaintext authentication disallowed "
                                b"on non-secure connections.", b"PRIVACYREQUIRED")
        if self.session.listener.require_tls:  # a session that logs in without upgrading ends
            return Answer(Then.CLOSE, tagged=refused, last_words=BYE_TLS_REQUIRED,
                          close=Close.TLS_REQUIRED)
        return Answer(tagged=refused)

    def _login(self, cmd: events.Command, _: int) -> Answer:
        args = [bytes(a) for a in cmd.args if isinstance(a, bytes)]  # strings, not lists
        if len(cmd.args) != 2 or len(args) != 2:
            return _bad(cmd.tag, b"LOGIN expects a user name and a password.")
        refused = self._plaintext_refused(cmd.tag)
        if refused is not None:
            return refused
        try:
            user = decode_user(args[0])
        except SaslError as exc:
            return _bad(cmd.tag, str(exc).encode())
        return Answer(Then.LOGIN, login=LoginRequest(cmd.tag, Credentials(user, args[1], "LOGIN")))

    def _authenticate(self, cmd: events.Command, _: int) -> Answer:
        args = [bytes(a) for a in cmd.args if isinstance(a, bytes)]
        if not cmd.args or not isinstance(cmd.args[0], bytes) or len(cmd.args) > 2:
            return _bad(cmd.tag, b"AUTHENTICATE expects a mechanism.")
        mechanism = args[0].upper().decode("ascii", "replace")
        tokens = self.session.listener.oauth2_passthrough
        if mechanism not in ("PLAIN", "LOGIN") and not (tokens and mechanism in PARSERS):
            return Answer(tagged=writer.tagged(cmd.tag, b"NO", b"Unsupported authentication "
                                               b"mechanism.", b"CANNOT"))
        refused = self._plaintext_refused(cmd.tag)
        if refused is not None:
            return refused
        initial = args[1] if len(args) == 2 else None
        if initial is None or mechanism == "LOGIN":   # prompts: the caller's I/O
            return Answer(Then.SASL, sasl=(mechanism, initial))
        try:
            creds = sasl_credentials(mechanism, b64decode(initial))
        except SaslError as exc:
            return _bad(cmd.tag, str(exc).encode())
        return Answer(Then.LOGIN, login=LoginRequest(cmd.tag, creds))


_HANDLERS = {
    b"CAPABILITY": ImapPrelogin._capability,
    b"NOOP": ImapPrelogin._noop,
    b"LOGOUT": ImapPrelogin._logout,
    b"ID": ImapPrelogin._id,
    b"STARTTLS": ImapPrelogin._starttls,
    b"LOGIN": ImapPrelogin._login,
    b"AUTHENTICATE": ImapPrelogin._authenticate,
}
