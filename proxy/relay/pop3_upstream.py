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

from ..config import Upstream
from ..net.conn import Conn
from ..pop3 import NEED_DATA, ResponseParser, events, writer
from ..session.channel import Channel
from ..session.context import Session
from ..session.failures import Failure
from ..session.login import dial
from ..session.oauth_sasl import TOKEN_MECHANISMS, dummy_response
from ..session.sasl import Credentials, encode_plain
from ..session.starttls import upgrade_upstream
from ..session.upstream import UpstreamError, deadline, next_upstream_event, service

# Not relayable after login, or meaningless then (RFC 2449 6).
_DROPPED = (b"STLS", b"SASL", b"USER", b"APOP", b"XCLIENT", b"IMPLEMENTATION", b"AUTH-RESP-CODE")
_TEMPFAIL_CODES = (b"SYS/TEMP", b"IN-USE", b"LOGIN-DELAY")


@dataclass
class UpstreamPOP3:
    channel: Channel[ResponseParser]
    capabilities: tuple[bytes, ...] = ()
    xclient: bool = False
    sasl_challenge: bytes | None = None  # a token login's error challenge (base64 JSON)

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
    lines = b"".join(body).split(b"\r\n")
    up.capabilities = tuple(line for line in lines if line) if status.ok else ()


async def connect(session: Session, name: str, upstream: Upstream) -> UpstreamPOP3:
    up = UpstreamPOP3.over(await dial(session, name, upstream))
    timeouts = session.listener.timeouts
    try:
        with deadline(timeouts.upstream_connect, "greeting"):
            greeting = await _status(up)
        if not greeting.ok:
            raise UpstreamError(Failure.UPSTREAM, "upstream greeting was -ERR")
        up.xclient = greeting.code == b"XCLIENT"
        with deadline(timeouts.upstream_response, "capabilities"):
            await read_capa(up)
            if service(upstream, "pop3").tls == "starttls":
                await _stls(session, name, up)
                await read_capa(up)
        return up
    except BaseException:
        await up.conn.aclose()
        raise


async def _stls(session: Session, name: str, up: UpstreamPOP3) -> None:
    status = await _request(up, b"STLS\r\n", False)
    await upgrade_upstream(session, name, up.conn, status.ok, up.channel.parser.buffered)
    up.channel.parser = ResponseParser(greeting=False)
    up.capabilities = ()  # RFC 2595 4: what was learnt before TLS is not trusted


async def login(session: Session, upstream: Upstream, up: UpstreamPOP3,
                creds: Credentials) -> events.StatusLine:
    """XCLIENT (when forwarding), then AUTH PLAIN or USER/PASS; then CAPA on success. Bounded
    by the caller's deadline()."""
    if upstream.forward_client_ip and (up.xclient or up.has(b"XCLIENT")):
        line = b"XCLIENT ADDR=%s PORT=%d\r\n" % (session.client_ip.encode(), session.client_port)
        status = await _request(up, line, False)
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
    elif up.has(b"PIPELINING"):
        up.channel.parser.expect(False)
        up.channel.parser.expect(False)
        await up.conn.send(writer.command(b"USER", creds.user.encode()) +
                           b"PASS " + creds.password + b"\r\n")
        first = await _status(up)
        status = await _status(up)
        if not first.ok:
            status = first
    else:
        status = await _request(up, writer.command(b"USER", creds.user.encode()), False)
        if status.ok:
            status = await _request(up, b"PASS " + creds.password + b"\r\n", False)
    if status.ok:
        await read_capa(up)  # RFC 2449 5: capabilities may change after login
    return status


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
