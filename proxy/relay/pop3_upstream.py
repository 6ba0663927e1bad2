"""The proxy as a POP3 client of the upstream: greeting, STLS, XCLIENT, login, CAPA.

STLS to the upstream (RFC 2595 4): bytes after the server's +OK and before the handshake are a
response injection (CVE-2011-0411 class) and abort the session; CAPA is re-read after TLS.
Dovecot offers XCLIENT in its greeting (`+OK [XCLIENT] ...`), others in CAPA; both are honoured
when `forward_client_ip` is set. Login uses AUTH PLAIN when the server offers SASL PLAIN
(any byte in a password survives base64), else USER/PASS (pipelined when offered, RFC 2449 6.6).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from ..config import Pop3Service, Upstream
from ..net.conn import Conn
from ..pop3 import NEED_DATA, ResponseParser, events, writer
from ..session.channel import Channel
from ..session.context import Session
from ..session.failures import Failure
from ..session.login import dial
from ..session.oauth_sasl import TOKEN_MECHANISMS, dummy_response
from ..session.sasl import Credentials, encode_plain
from ..session.starttls import upgrade_upstream
from ..session.upstream import UpstreamError, adopt, deadline, next_upstream_event, service
from ..session.warm_pool import WarmConnection

# Not relayable after login, or meaningless then (RFC 2449 6).
_DROPPED = (b"STLS", b"SASL", b"USER", b"APOP", b"XCLIENT", b"IMPLEMENTATION", b"AUTH-RESP-CODE")
_TEMPFAIL_CODES = (b"SYS/TEMP", b"IN-USE", b"LOGIN-DELAY")


@dataclass
class UpstreamPOP3:
    channel: Channel[ResponseParser]
    capabilities: tuple[bytes, ...] = ()
    xclient: bool = False
    sasl_challenge: bytes | None = None  # a token login's error challenge (base64 JSON)
    early: _Early | None = None  # a login in flight since the connect
    warm: bool = False   # taken from the upstream's warm pool (session/warm_pool.py)

    @classmethod
    def over(cls, conn: Conn) -> UpstreamPOP3:
        return cls(Channel(conn, ResponseParser(), NEED_DATA))

    @property
    def conn(self) -> Conn:
        return self.channel.conn

    def has(self, name: bytes) -> bool:
        return any(c.split(b" ", 1)[0] == name for c in self.capabilities)

    def sasl_mechanisms(self) -> set[bytes]:
        for c in self.capabilities:
            if c.startswith(b"SASL "):
                return set(c.upper().split()[1:])
        return set()


def relayable(capabilities: tuple[bytes, ...]) -> list[bytes]:
    return [c for c in capabilities if c.split(b" ", 1)[0].upper() not in _DROPPED]


async def _status(up: UpstreamPOP3, body: list[bytes] | None = None) -> events.StatusLine:
    """The next StatusLine (and, when `body` is given, the multi-line body that follows).
    Bounded by the caller's deadline()."""
    status = None
    while True:
        event = await next_upstream_event(up.channel)
        if isinstance(event, events.StatusLine):
            if body is None or not event.ok:
                return event
            status = event
        elif isinstance(event, events.MultilineData) and body is not None:
            body.append(bytes(event.data))
        elif isinstance(event, events.MultilineEnd) and status is not None:
            return status
        elif isinstance(event, events.Continuation):
            raise UpstreamError(Failure.PROTOCOL, "unexpected continuation")


async def _request(up: UpstreamPOP3, line: bytes, multiline: bool,
                   body: list[bytes] | None = None) -> events.StatusLine:
    up.channel.parser.expect(multiline)
    await up.conn.send(line)
    return await _status(up, body)


async def read_capa(up: UpstreamPOP3) -> None:
    body: list[bytes] = []
    status = await _request(up, b"CAPA\r\n", True, body)
    up.capabilities = _capabilities(body) if status.ok else ()


def _capabilities(body: list[bytes]) -> tuple[bytes, ...]:
    return tuple(line for line in b"".join(body).split(b"\r\n") if line)


async def connect(session: Session, name: str, upstream: Upstream, steps: deadline,
                  creds: Credentials | None = None, *, warm: bool = True) -> UpstreamPOP3:
    """Connect, read the greeting and CAPA, STLS if configured (then CAPA again); bounded by
    `steps`, the caller's deadline for the whole upstream dialogue (at its "connect" step).

    With `creds`, when an earlier CAPA of this upstream announced PIPELINING and a login
    method (session/early_login.py) and no STLS is to come, XCLIENT (when forwarding), the
    login and the CAPA after it are written at once, built for those capabilities: greeting,
    verdict and capabilities come back in one round trip instead of four. `login()` collects
    the replies (`up.early`). `pop3.pipelined_login: false` turns this off.

    With `warm` (and `pop3.warm_pool:`), a connection of the upstream's warm pool, greeted
    and its CAPA read, is used when one is ready (`up.warm`)."""
    if warm:
        taken = session.runtime.warm_pools.take("pop3", name, upstream)
        if taken is not None:
            return from_warm(taken)
    up = UpstreamPOP3.over(await dial(session, name, upstream, steps))
    up.warm = session.upstream_early   # begun at accept: retried fresh if dropped
    timeouts = session.listener.timeouts
    svc = service(upstream, "pop3")
    pipelined = isinstance(svc, Pop3Service) and svc.pipelined_login and svc.tls != "starttls"
    known = session.runtime.known_greetings
    greeted = False
    try:
        if creds is not None and pipelined:
            await _send_early(session, upstream, up, creds, known.early("pop3", name))
        steps.step(timeouts.upstream_connect, "greeting")
        greeting = await _status(up)
        greeted = True
        if not greeting.ok:
            raise UpstreamError(Failure.UPSTREAM, "upstream greeting was -ERR")
        up.xclient = greeting.code == b"XCLIENT"
        if up.early is not None:
            return up   # the capabilities come with the login's replies
        steps.step(timeouts.upstream_response, "capabilities")
        await read_capa(up)
        if svc.tls == "starttls":
            await _stls(session, name, up)
            await read_capa(up)
        if pipelined:
            known.learnt("pop3", name, up.capabilities + ((b"XCLIENT",) if up.xclient else ()))
        return up
    except BaseException as exc:
        if up.early is not None and not greeted:
            known.no_greeting("pop3", name, exc, steps)
        await up.conn.aclose()
        raise


def from_warm(taken: WarmConnection) -> UpstreamPOP3:
    """The session's upstream on a warm connection: greeted, its CAPA known."""
    up = UpstreamPOP3(Channel(adopt(taken.sock), ResponseParser(greeting=False), NEED_DATA))
    up.capabilities, up.xclient, up.warm = taken.capabilities, taken.xclient, True
    return up


async def greet(up: UpstreamPOP3) -> None:
    """A warm connection's dialogue before it is pooled (relay/warm_fill.py): the greeting
    and CAPA. Bounded by the caller's deadline()."""
    greeting = await _status(up)
    if not greeting.ok:
        raise UpstreamError(Failure.UPSTREAM, "upstream greeting was -ERR")
    up.xclient = greeting.code == b"XCLIENT"
    await read_capa(up)


async def _send_early(session: Session, upstream: Upstream, up: UpstreamPOP3,
                      creds: Credentials, capabilities: tuple[bytes, ...]) -> None:
    up.capabilities = capabilities
    written = _pipelined_login(session, upstream, up, creds)
    up.capabilities = ()   # what counts is what this connection says
    if written is not None:
        up.early = _Early(capabilities, written)
        await up.conn.send(written.data)


async def _stls(session: Session, name: str, up: UpstreamPOP3) -> None:
    status = await _request(up, b"STLS\r\n", False)
    await upgrade_upstream(session, name, up.conn, status.ok, up.channel.parser.buffered)
    up.channel.parser = ResponseParser(greeting=False)
    up.capabilities = ()  # RFC 2595 4: what was learnt before TLS is not trusted


@dataclass(frozen=True, slots=True)
class _Written:
    """A login written in one go: its bytes, whether XCLIENT leads it, and how many
    single-line replies the login itself gets (AUTH PLAIN 1, USER/PASS 2); CAPA follows."""

    data: bytes
    xclient: bool
    replies: int


@dataclass(frozen=True, slots=True)
class _Early:
    """A login written before the greeting was read, built for `capabilities`."""

    capabilities: tuple[bytes, ...]
    written: _Written


def _pipelined_login(session: Session, upstream: Upstream, up: UpstreamPOP3,
                     creds: Credentials) -> _Written | None:
    """XCLIENT (when forwarding), the login and CAPA in one write, when up's capabilities
    allow it: PIPELINING (RFC 2449 6.6) and AUTH PLAIN with its initial response (RFC 5034 4)
    or USER/PASS with a password a PASS line can carry. None otherwise. The parser is told
    what to expect in order."""
    if creds.mechanism in TOKEN_MECHANISMS or not up.has(b"PIPELINING"):
        return None
    if b"PLAIN" in up.sasl_mechanisms():
        login = writer.command(b"AUTH", b"PLAIN", encode_plain(creds.user, creds.password))
        replies = 1
    elif up.has(b"USER") and not any(c in creds.password for c in b"\r\n\0"):
        login = writer.command(b"USER", creds.user.encode()) + b"PASS " + creds.password + b"\r\n"
        replies = 2
    else:
        return None
    xclient = upstream.forward_client_ip and (up.xclient or up.has(b"XCLIENT"))
    prefix = _xclient_line(session) if xclient else b""
    parser = up.channel.parser
    for _ in range(replies + xclient):
        parser.expect(False)
    parser.expect(True)
    return _Written(prefix + login + b"CAPA\r\n", xclient, replies)


def _xclient_line(session: Session) -> bytes:
    return b"XCLIENT ADDR=%s PORT=%d\r\n" % (session.client_ip.encode(), session.client_port)


async def login(session: Session, upstream: Upstream, up: UpstreamPOP3,
                creds: Credentials) -> events.StatusLine:
    """XCLIENT (when forwarding), then AUTH PLAIN or USER/PASS; then CAPA on success (all in
    one write with PIPELINING). Bounded by the caller's deadline(). A login written early
    (`connect`) is answered here; if it failed and the CAPA after it shows other capabilities
    than it was built for, it is done again for those."""
    early, up.early = up.early, None
    if early is not None:
        status = await _login_replies(up, early.written)
        if status.ok or not up.capabilities or _same(up.capabilities, early.capabilities):
            return status   # (no capabilities: the CAPA was not answered)
    if creds.mechanism not in TOKEN_MECHANISMS:
        written = _pipelined_login(session, upstream, up, creds)
        if written is not None:
            await up.conn.send(written.data)
            return await _login_replies(up, written)
    if upstream.forward_client_ip and (up.xclient or up.has(b"XCLIENT")):
        status = await _request(up, _xclient_line(session), False)
        if not status.ok:
            raise UpstreamError(Failure.UPSTREAM, "upstream refused XCLIENT")
    if creds.mechanism in TOKEN_MECHANISMS:
        status = await _auth_token(up, creds)
        if status.ok:
            await read_capa(up)
        return status
    plain = b"PLAIN" in up.sasl_mechanisms()
    if not plain and any(c in creds.password for c in b"\r\n\0"):  # would end the PASS line
        raise UpstreamError(Failure.AUTH_REJECTED, "password not representable in PASS")
    if plain:
        status = await _request(up, writer.command(b"AUTH", b"PLAIN", encode_plain(
            creds.user, creds.password)), False)
    else:
        status = await _request(up, writer.command(b"USER", creds.user.encode()), False)
        if status.ok:
            status = await _request(up, b"PASS " + creds.password + b"\r\n", False)
    if status.ok:
        await read_capa(up)  # RFC 2449 5: capabilities may change after login
    return status


async def _login_replies(up: UpstreamPOP3, written: _Written) -> events.StatusLine:
    """The replies to a pipelined login: XCLIENT's, the login's, and the CAPA's that followed
    (after a refused login, the capabilities before login)."""
    if written.xclient and not (await _status(up)).ok:
        raise UpstreamError(Failure.UPSTREAM, "upstream refused XCLIENT")
    status = await _status(up)
    if written.replies == 2:
        second = await _status(up)   # PASS (after a refused USER: its -ERR)
        if status.ok:
            status = second
    body: list[bytes] = []
    try:
        capa = await _status(up, body)
    except UpstreamError:
        if status.ok:
            raise
        return status   # closed after the refusal: the verdict stands
    up.capabilities = _capabilities(body) if capa.ok else ()
    return status


def _same(capabilities: tuple[bytes, ...], remembered: tuple[bytes, ...]) -> bool:
    """Whether CAPA says what was remembered (`connect` adds the greeting's XCLIENT to it)."""
    return set(capabilities) - {b"XCLIENT"} == set(remembered) - {b"XCLIENT"}


async def _auth_token(up: UpstreamPOP3, creds: Credentials) -> events.StatusLine:
    """AUTH XOAUTH2 / OAUTHBEARER with the client's message as the initial response (RFC 5034
    4). A failure comes as a `+ base64(json)` challenge: kept in `up.sasl_challenge`, answered
    with the mechanism's dummy response, then the -ERR. Bounded by the caller's deadline()."""
    if creds.mechanism.encode() not in up.sasl_mechanisms():
        raise UpstreamError(Failure.AUTH_REJECTED, f"upstream does not offer {creds.mechanism}")
    up.channel.parser.expect(False)
    await up.conn.send(b"AUTH %s %s\r\n" % (creds.mechanism.encode(),
                                              base64.b64encode(creds.password)))
    while True:
        event = await next_upstream_event(up.channel)
        if isinstance(event, events.Continuation):
            up.sasl_challenge = bytes(event.data)
            await up.conn.send(dummy_response(creds.mechanism) + b"\r\n")
        elif isinstance(event, events.StatusLine):
            return event


def is_tempfail(status: events.StatusLine) -> bool:
    return status.code is not None and status.code.upper().startswith(_TEMPFAIL_CODES)
