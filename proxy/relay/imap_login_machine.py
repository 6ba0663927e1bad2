"""The proxy's login at an IMAP upstream, as a sans-IO machine: bytes in, steps out.

Theory of operation: one `ImapLogin` per upstream connection reads the upstream's responses
with the connection's own ResponseParser (the relay keeps that parser afterwards, so nothing the
upstream sent is lost between the two phases) and says what to do next. Its two drivers do only
I/O: trio's login (imap_upstream.py: `while (step := m.next_step()) is NEED_DATA: feed`) and the
relay engine's thread (engine_login.py: each chunk fed as it arrives). `next_step()` returns

- NEED_DATA: feed more (`receive_data`, b"" at end of stream);
- GREETED, once, after the greeting (RFC 3501 7.1: `* OK`, its CAPABILITY code learnt; a
  PREAUTH greeting fails, RFC 3501 7.1.4, and so does anything else);
- the awaited tagged completion of a plain command (`expect(tag)`: CAPABILITY, STARTTLS);
- a ContinuationRequest, only where the caller said it sends literals or SASL (`continuations`);
- a `Send`: bytes to write before reading on (the login again, a CAPABILITY);
- the login's `Verdict` (its tagged reply, the capabilities known) once `begin_login` started
  one, or `Unsendable` when it must be sent again and cannot go in one write;
- `Failed(failure, detail)`: the upstream cannot be used (EOF, garbage, BYE, an unexpected
  continuation); the machine is done then.

Untagged CAPABILITY data and CAPABILITY response codes replace the known capabilities wherever
they come (RFC 3501 7.2.1, 7.1); other tagged completions (an ID's) are passed over. The login
goes out in one write (`login_lines`) when the capabilities allow it: AUTHENTICATE PLAIN with
SASL-IR (RFC 4959), or LOGIN with quoted strings or LITERAL+ (RFC 7888), an ID forwarding the
client's address in front (RFC 2971). An *early* login is written before the greeting is read,
built for capabilities an earlier greeting announced (session/early_login.py). Its verdict
stands when it is an OK, or when this connection announced the capabilities it was built for;
otherwise it is sent once more, in the same connection, for what this connection announced. A
greeting without capabilities is asked CAPABILITY before that comparison: the verdict is decided
here, the upstream never logged in twice from scratch. An OK without a CAPABILITY code is
followed by a CAPABILITY command, so a Verdict's OK always comes with the capabilities to relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..imap import NEED_DATA, ProtocolError, ResponseParser, events, writer
from ..session.failures import IMAP_TEMPFAIL_CODES, Failure
from ..session.oauth_sasl import TOKEN_MECHANISMS
from ..session.sasl import Credentials, encode_plain
from .imap_capabilities import capabilities_from

__all__ = ["GREETED", "Failed", "ImapLogin", "LoginClient", "NEED_DATA", "Send", "Unsendable",
           "Verdict", "failure_of", "login_lines"]


class LoginClient(Protocol):
    """What the machine keeps its state in: the upstream connection's (imap_upstream.UpstreamIMAP)."""

    capabilities: tuple[bytes, ...]

    @property
    def parser(self) -> ResponseParser: ...

    def next_tag(self) -> bytes: ...

    def has(self, capability: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Failed:
    """The upstream cannot be used; `detail` is safe to log (session/upstream.UpstreamError)."""

    failure: Failure
    detail: str


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    reply: events.TaggedResponse


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


GREETED = _Marker("GREETED")
Unsendable = _Marker("Unsendable")


def failure_of(reply: events.TaggedResponse) -> Failure | None:
    """None for an OK; a refusal is a temporary failure when its response code says so."""
    if reply.status == b"OK":
        return None
    return Failure.AUTH_TEMPFAIL if reply.code in IMAP_TEMPFAIL_CODES else Failure.AUTH_REJECTED


def login_lines(up: LoginClient, creds: Credentials, id_fields: bytes | None
                ) -> tuple[bytes, bytes | None, bytes] | None:
    """(the ID and login lines, the ID's tag, the login's tag) when, with up's capabilities, the
    login needs no continuation; None otherwise (no tag is used then). `id_fields`: the ID's
    parameter list when the client's address is forwarded (and the upstream offers ID)."""
    if creds.mechanism in TOKEN_MECHANISMS:
        return None
    if up.has(b"AUTH=PLAIN") and up.has(b"SASL-IR"):
        login_line = b"AUTHENTICATE PLAIN %s\r\n" % encode_plain(creds.user, creds.password)
    elif up.has(b"LOGINDISABLED"):
        return None
    else:
        parts = [b"LOGIN"]
        for value in (creds.user.encode(), creds.password):
            encoded = writer.astring(value)
            if encoded.startswith(b"{"):
                if not up.has(b"LITERAL+"):
                    return None
                encoded = writer.literal_plus(value)
            parts.append(encoded)
        login_line = b" ".join(parts) + b"\r\n"
    id_tag, lines = id_line(up, id_fields)
    tag = up.next_tag()
    return lines + tag + b" " + login_line, id_tag, tag


def id_line(up: LoginClient, id_fields: bytes | None) -> tuple[bytes | None, bytes]:
    """(its tag, the ID command) when the client address is forwarded, else (None, b"")."""
    if id_fields is not None and up.has(b"ID"):
        id_tag = up.next_tag()
        return id_tag, b"%s ID (%s)\r\n" % (id_tag, id_fields)
    return None, b""


class _Login:
    """The login in flight: its tag, what it was built for, what came back so far."""

    __slots__ = ("creds", "id_fields", "tag", "early", "again", "ok", "refused")

    def __init__(self, creds: Credentials, id_fields: bytes | None, tag: bytes,
                 early: tuple[bytes, ...] | None):
        self.creds, self.id_fields, self.tag, self.early = creds, id_fields, tag, early
        self.again = False                                # sent once more, in this connection
        self.ok: events.TaggedResponse | None = None      # an OK while its CAPABILITY is asked
        self.refused: events.TaggedResponse | None = None  # a refusal while CAPABILITY is asked


class ImapLogin:
    """See the module docstring. `greeting`: the capabilities the greeting announced (())."""

    __slots__ = ("up", "tls_required", "continuations", "greeted", "greeting", "waiting",
                 "_login")

    def __init__(self, up: LoginClient, *, greeted: bool = False,
                 tls_required: bool = False) -> None:
        self.up = up
        self.tls_required = tls_required   # (a PREAUTH greeting's detail says so)
        self.continuations = False
        self.greeted = greeted
        self.greeting: tuple[bytes, ...] = ()
        self.waiting: bytes | None = None   # the tag whose completion is awaited
        self._login: _Login | None = None

    def receive_data(self, data: bytes) -> None:
        self.up.parser.receive_data(data)

    @property
    def early(self) -> bool:
        """Whether an early login is in flight (its verdict not read yet)."""
        return self._login is not None and self._login.early is not None

    def expect(self, tag: bytes) -> None:
        """A plain command was sent under `tag`: its completion is the next step to return."""
        self.waiting = tag

    def begin_login(self, creds: Credentials, id_fields: bytes | None,
                    early: tuple[bytes, ...] | None = None) -> bytes | None:
        """The bytes of a one-write login (None when it needs a continuation: nothing is in
        flight then); with `early`, built for those capabilities before the greeting is read."""
        up = self.up
        kept = up.capabilities
        if early is not None:
            up.capabilities = early
        lines = login_lines(up, creds, id_fields)
        if early is not None:
            up.capabilities = kept   # what counts is what this connection announces
        if lines is None:
            return None
        data, _, tag = lines
        self._login = _Login(creds, id_fields, tag, early)
        self.waiting = tag
        return data

    def next_step(self) -> object:
        while True:
            event = self._next_response()
            if event is NEED_DATA or isinstance(event, Failed):
                return event
            if not self.greeted:
                return self._greeting(event)
            if isinstance(event, events.UntaggedResponse):
                if event.name == b"CAPABILITY":
                    self.up.capabilities = capabilities_from(
                        event.raw.split(b" ", 2)[2] if event.raw.count(b" ") >= 2 else b"")
                elif event.name == b"BYE":
                    return Failed(Failure.UPSTREAM, "upstream said BYE")
            elif isinstance(event, events.ContinuationRequest):
                if self.continuations:
                    return event
                return Failed(Failure.PROTOCOL, "unexpected continuation request")
            elif isinstance(event, events.TaggedResponse) and event.tag == self.waiting:
                self.waiting = None
                if event.code == b"CAPABILITY" and event.code_args:
                    self.up.capabilities = capabilities_from(event.code_args)
                if self._login is None:
                    return event
                return self._login_reply(event)

    def _next_response(self) -> object:
        """The next complete response (literals skipped: before login they carry nothing the
        proxy needs), NEED_DATA, or Failed at end of stream or on garbage."""
        parser = self.up.parser
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                return Failed(Failure.PROTOCOL, f"bad response: {exc.text}")
            if isinstance(event, events.ConnectionClosed):
                return Failed(Failure.UPSTREAM, "connection closed by upstream")
            if not isinstance(event, (events.LiteralStart, events.LiteralData)):
                return event

    def _greeting(self, event: object) -> object:
        if not isinstance(event, events.UntaggedResponse) or event.name not in (b"OK", b"PREAUTH"):
            return Failed(Failure.UPSTREAM, "upstream greeting was not OK")
        if event.name == b"PREAUTH":   # RFC 3501 7.1.4: the proxy would never log in
            return Failed(Failure.PROTOCOL, "PREAUTH greeting where TLS is required"
                          if self.tls_required else "PREAUTH greeting")
        self.greeted = True
        if event.code == b"CAPABILITY" and event.code_args:
            self.greeting = capabilities_from(event.code_args)
            self.up.capabilities = self.greeting
        return GREETED

    def _login_reply(self, reply: events.TaggedResponse) -> object:
        login = self._login
        assert login is not None
        if login.ok is not None:                  # the CAPABILITY after an OK
            return self._verdict(login.ok)
        if login.refused is not None:             # the CAPABILITY after a refusal
            return self._refused(login.refused)
        if reply.status == b"OK":
            if reply.code == b"CAPABILITY" and reply.code_args:
                return self._verdict(reply)
            login.ok = reply
            return self._ask_capabilities()
        if login.early is None or login.again:
            return self._verdict(reply)
        if not self.greeting:                     # what does this connection announce?
            login.refused = reply
            return self._ask_capabilities()
        return self._refused(reply)

    def _refused(self, reply: events.TaggedResponse) -> object:
        """An early login refused: it stands if it was built for what this connection
        announced, else it goes once more, built for that."""
        login = self._login
        assert login is not None and login.early is not None
        login.refused = None
        if self.up.capabilities == login.early:
            return self._verdict(reply)
        lines = login_lines(self.up, login.creds, login.id_fields)
        if lines is None:   # (literals without LITERAL+, LOGINDISABLED)
            self._login = None
            return Unsendable
        data, _, login.tag = lines
        login.again = True
        self.waiting = login.tag
        return Send(data)

    def _ask_capabilities(self) -> Send:
        self.waiting = self.up.next_tag()
        return Send(b"%s CAPABILITY\r\n" % self.waiting)

    def _verdict(self, reply: events.TaggedResponse) -> Verdict:
        self._login = None
        return Verdict(reply)
