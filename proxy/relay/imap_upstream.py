"""The proxy as an IMAP client of the upstream: greeting, STARTTLS, ID forwarding, login.

Theory of operation: the proxy uses its own tags (`P1`, `P2`, ...) for what it sends on its own
behalf; the client later gets the verdict under its own tag. Everything before login is read with
the sans-IO ResponseParser in framing mode (no tokenising), which is also the parser the relay keeps
using afterwards, so nothing the upstream sent is lost between the two phases.

STARTTLS to the upstream (RFC 3501 6.2.1, RFC 2595 3.1): bytes the server sent after its OK and
before the handshake are a response-injection attempt (CVE-2011-0411 class): abort. A PREAUTH
greeting where TLS is required aborts too: the session would never be encrypted. Capabilities
are re-read after TLS; nothing from before the handshake is trusted.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import lru_cache

from ..config import ImapService, Upstream
from ..imap import NEED_DATA, Limits, ResponseParser, events, writer
from ..net.conn import Conn
from ..session.channel import Channel
from ..session.context import Session
from ..session.failures import Failure
from ..session.login import dial
from ..session.oauth_sasl import TOKEN_MECHANISMS, dummy_response
from ..session.sasl import Credentials, encode_plain
from ..session.starttls import upgrade_upstream
from ..session.upstream import UpstreamError, adopt, deadline, next_upstream_event, service
from ..session.warm_pool import WarmConnection

# What the proxy cannot relay, or must not offer after login (RFC 3501 7.2.1; STARTTLS/AUTH make
# no sense after login; of COMPRESS, only DEFLATE is relayed, imap_compress.py).
_DROPPED_PREFIXES = (b"AUTH=", b"COMPRESS=", b"STARTTLS", b"LOGINDISABLED", b"SASL-IR",
                     b"LOGIN-REFERRALS", b"XCLIENT", b"X-")
_KEPT = (b"COMPRESS=DEFLATE",)

UPSTREAM_LIMITS_LINE = 64 * 1024 * 1024  # a long SEARCH result is one line


_UPSTREAM_LIMITS = Limits(max_line=UPSTREAM_LIMITS_LINE, max_literal=2**62,
                          max_nonsync_literal=2**62)


def upstream_limits() -> Limits:
    return _UPSTREAM_LIMITS   # frozen: one for every session


@dataclass
class EarlyLogin:
    """A login sent before the greeting was read (see `connect`), built for `capabilities`."""

    capabilities: tuple[bytes, ...]
    id_tag: bytes | None
    tag: bytes


@dataclass
class UpstreamIMAP:
    channel: Channel[ResponseParser]
    capabilities: tuple[bytes, ...] = ()
    tag_counter: int = 0
    sasl_challenge: bytes | None = None  # a token login's error challenge (base64 JSON)
    early: EarlyLogin | None = None  # a login in flight since the connect
    warm: bool = False   # taken from the upstream's warm pool (session/warm_pool.py)
    # (capabilities, their upper-case set): has() is asked several times per login
    _upper_memo: tuple[tuple[bytes, ...], frozenset[bytes]] = field(
        default=((), frozenset()), repr=False, compare=False)

    @classmethod
    def over(cls, conn: Conn) -> UpstreamIMAP:
        return cls(Channel(conn, ResponseParser(upstream_limits()), NEED_DATA))

    @property
    def conn(self) -> Conn:
        return self.channel.conn

    def next_tag(self) -> bytes:
        self.tag_counter += 1
        return b"P%d" % self.tag_counter

    def has(self, capability: bytes) -> bool:
        capabilities, upper = self._upper_memo
        if capabilities is not self.capabilities:   # (reassigned, never changed in place)
            capabilities = self.capabilities
            upper = _upper(capabilities)
            self._upper_memo = (capabilities, upper)
        return capability.upper() in upper


# An upstream announces the same few capability lists to every session: the functions below
# are cached per list instead of run for every login, and sessions share one tuple per list (an
# idle session would otherwise keep ~40 small bytes objects, 1.9 KB). Only ordinary lists are
# kept (at most CACHED_CAPABILITIES names of CACHED_CAPABILITY_LENGTH bytes), so the caches
# stay small whatever an upstream sends.
CACHED_CAPABILITIES = 256
CACHED_CAPABILITY_LENGTH = 256


def capabilities_from(raw: bytes) -> tuple[bytes, ...]:
    if len(raw) <= CACHED_CAPABILITY_LENGTH * 8:
        return _split_cached(raw)
    return tuple(raw.split())


def _split(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw.split())


_split_cached = lru_cache(maxsize=16)(_split)


def _cacheable(capabilities: tuple[bytes, ...]) -> bool:
    return (len(capabilities) <= CACHED_CAPABILITIES
            and max(map(len, capabilities), default=0) <= CACHED_CAPABILITY_LENGTH)


def _upper(capabilities: tuple[bytes, ...]) -> frozenset[bytes]:
    return _upper_cached(capabilities) if _cacheable(capabilities) else _upper_of(capabilities)


def _upper_of(capabilities: tuple[bytes, ...]) -> frozenset[bytes]:
    return frozenset(c.upper() for c in capabilities)


_upper_cached = lru_cache(maxsize=16)(_upper_of)


def relayable(capabilities: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The upstream's post-login capabilities minus what the proxy cannot relay."""
    if _cacheable(capabilities):
        return _relayable_cached(capabilities)
    return _relayable(capabilities)


def _relayable(capabilities: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(c for c in capabilities
                 if not c.upper().startswith(_DROPPED_PREFIXES) or c.upper() in _KEPT)


_relayable_cached = lru_cache(maxsize=16)(_relayable)


async def next_response(up: UpstreamIMAP) -> object:
    """The next complete response event (literals skipped). Raises UpstreamError on EOF or
    garbage; bounded by the caller's deadline()."""
    while True:
        event = await next_upstream_event(up.channel)
        if not isinstance(event, (events.LiteralStart, events.LiteralData)):
            return event  # literals before login carry nothing we need


async def command(up: UpstreamIMAP, line: bytes) -> events.TaggedResponse:
    """Send one tagged command (the caller built `line` with up.next_tag()) and wait for its
    completion, keeping untagged CAPABILITY data."""
    tag = line.split(b" ", 1)[0]
    await up.conn.send(line)
    return await wait_tagged(up, tag)


async def wait_tagged(up: UpstreamIMAP, tag: bytes) -> events.TaggedResponse:
    while True:
        event = await next_response(up)
        if isinstance(event, events.TaggedResponse) and event.tag == tag:
            if event.code == b"CAPABILITY" and event.code_args:
                up.capabilities = capabilities_from(event.code_args)
            return event
        if isinstance(event, events.UntaggedResponse):
            if event.name == b"CAPABILITY":
                up.capabilities = capabilities_from(event.raw.split(b" ", 2)[2]
                                                    if event.raw.count(b" ") >= 2 else b"")
            elif event.name == b"BYE":
                raise UpstreamError(Failure.UPSTREAM, "upstream said BYE")
        if isinstance(event, events.ContinuationRequest):
            raise UpstreamError(Failure.PROTOCOL, "unexpected continuation request")


async def connect(session: Session, name: str, upstream: Upstream, steps: deadline,
                  creds: Credentials | None = None, *, warm: bool = True) -> UpstreamIMAP:
    """Connect, read the greeting, STARTTLS if configured, re-read capabilities; bounded by
    `steps`, the caller's deadline for the whole upstream dialogue (at its "connect" step).

    With `creds`, when an earlier greeting of this upstream announced its capabilities and no
    STARTTLS is to come (credentials never go out before it), the login (and the ID) is sent
    at once, built for those capabilities: the greeting and the login's reply then come back
    in one round trip instead of two (session/early_login.py). `login()` collects its reply
    (`up.early`). The upstream's `imap.pipelined_login: false` turns this off: nothing is sent
    before the greeting.

    With `warm` (and `imap.warm_pool:`), a connection of the upstream's warm pool, already
    greeted, is used when one is ready (`up.warm`)."""
    if warm:
        taken = session.runtime.warm_pools.take("imap", name, upstream)
        if taken is not None:
            return from_warm(taken)
    up = UpstreamIMAP.over(await dial(session, name, upstream, steps))
    up.warm = session.upstream_early   # begun at accept: retried fresh if dropped
    timeouts = session.listener.timeouts
    svc = service(upstream, "imap")
    tls = svc.tls
    pipelined = isinstance(svc, ImapService) and svc.pipelined_login and tls != "starttls"
    known = session.runtime.known_greetings
    greeted = False
    try:
        if creds is not None and pipelined:
            capabilities = known.early("imap", name)
            if capabilities:
                await _send_early(session, upstream, up, creds, capabilities)
        steps.step(timeouts.upstream_connect, "greeting")
        await _greeting(up, tls != "none")
        greeted = True
        if pipelined:
            known.learnt("imap", name, up.capabilities)
        if tls == "starttls" or not up.capabilities:
            steps.step(timeouts.upstream_response, "capabilities")
            if tls == "starttls":
                await _starttls(session, name, up)
            if not up.capabilities:
                await command(up, b"%s CAPABILITY\r\n" % up.next_tag())
        return up
    except BaseException as exc:
        if up.early is not None and not greeted:
            known.no_greeting("imap", name, exc, steps)
        await up.conn.aclose()
        raise


def from_warm(taken: WarmConnection) -> UpstreamIMAP:
    """The session's upstream on a warm connection: greeted, its capabilities known."""
    up = UpstreamIMAP.over(adopt(taken.sock))
    up.capabilities, up.tag_counter, up.warm = taken.capabilities, taken.tags_used, True
    return up


async def greet(up: UpstreamIMAP) -> None:
    """A warm connection's dialogue before it is pooled (relay/warm_fill.py): the greeting and,
    unless it announced them, the capabilities. Bounded by the caller's deadline()."""
    await _greeting(up, False)
    if not up.capabilities:
        await command(up, b"%s CAPABILITY\r\n" % up.next_tag())


async def _send_early(session: Session, upstream: Upstream, up: UpstreamIMAP,
                      creds: Credentials, capabilities: tuple[bytes, ...]) -> None:
    up.capabilities = capabilities
    lines = _one_write_login(session, upstream, up, creds)
    up.capabilities = ()   # what counts is what this connection's greeting says
    if lines is not None:
        data, id_tag, tag = lines
        up.early = EarlyLogin(capabilities, id_tag, tag)
        await up.conn.send(data)


async def _greeting(up: UpstreamIMAP, tls_required: bool) -> None:
    event = await next_response(up)
    if not isinstance(event, events.UntaggedResponse) or event.name not in (b"OK", b"PREAUTH"):
        raise UpstreamError(Failure.UPSTREAM, "upstream greeting was not OK")
    if event.name == b"PREAUTH":
        # RFC 3501 7.1.4; with TLS required a PREAUTH session could never be encrypted.
        reason = "PREAUTH greeting where TLS is required" if tls_required else "PREAUTH greeting"
        raise UpstreamError(Failure.PROTOCOL, reason)
    if event.code == b"CAPABILITY" and event.code_args:
        up.capabilities = capabilities_from(event.code_args)


async def _starttls(session: Session, name: str, up: UpstreamIMAP) -> None:
    if up.capabilities and not up.has(b"STARTTLS"):
        session.runtime.metrics.starttls.labels("upstream", "imap", "refused").inc()
        raise UpstreamError(Failure.TLS, "upstream does not offer STARTTLS")
    reply = await command(up, b"%s STARTTLS\r\n" % up.next_tag())
    await upgrade_upstream(session, name, up.conn, reply.status == b"OK",
                           up.channel.parser.buffered)
    up.channel.parser = ResponseParser(upstream_limits())
    up.capabilities = ()  # RFC 3501 6.2.1: discard what was learnt before TLS


def forward_id(session: Session, tag: bytes) -> bytes:
    """Dovecot's ID extension fields that carry the real client address (login_trusted_networks)."""
    fields = (b"x-originating-ip", session.client_ip.encode(),
              b"x-originating-port", str(session.client_port).encode(),
              b"x-connected-ip", session.local_ip.encode(),
              b"x-connected-port", str(session.local_port).encode())
    return b"%s ID (%s)\r\n" % (tag, b" ".join(writer.quoted(f) for f in fields))


async def login(session: Session, upstream: Upstream, up: UpstreamIMAP,
                creds: Credentials) -> events.TaggedResponse:
    """ID (when forwarding the client address) and the login, pipelined in one write; bounded
    by the caller's deadline(). A login sent early (`connect`) is answered here; if it failed
    and the greeting announced other capabilities than it was built for, it is done again for
    the greeting's."""
    early, up.early = up.early, None
    if early is not None:
        if early.id_tag is not None:
            await wait_tagged(up, early.id_tag)
        greeted = up.capabilities
        reply = await wait_tagged(up, early.tag)
        if reply.status == b"OK" or greeted == early.capabilities:
            return reply
        up.capabilities = greeted
    if creds.mechanism in TOKEN_MECHANISMS:
        id_tag, lines = _id_line(session, upstream, up)
        return await _authenticate_token(session, up, lines, id_tag, up.next_tag(), creds)
    one_write = _one_write_login(session, upstream, up, creds)
    if one_write is not None:
        lines, id_tag, tag = one_write
        await up.conn.send(lines)
    elif up.has(b"LOGINDISABLED"):
        raise UpstreamError(Failure.UPSTREAM, "upstream offers no usable login method")
    else:
        id_tag, lines = _id_line(session, upstream, up)
        tag = up.next_tag()
        await _send_login(up, lines, tag, creds)
    if id_tag is not None:
        await wait_tagged(up, id_tag)
    return await wait_tagged(up, tag)


def _id_line(session: Session, upstream: Upstream, up: UpstreamIMAP) -> tuple[bytes | None, bytes]:
    """(its tag, the ID command) when the client address is forwarded, else (None, b"")."""
    if upstream.forward_client_ip and up.has(b"ID"):
        id_tag = up.next_tag()
        return id_tag, forward_id(session, id_tag)
    return None, b""


def _one_write_login(session: Session, upstream: Upstream, up: UpstreamIMAP,
                     creds: Credentials) -> tuple[bytes, bytes | None, bytes] | None:
    """(the ID and login lines, the ID's tag, the login's tag) when, with up's capabilities,
    the login needs no continuation: AUTHENTICATE PLAIN with SASL-IR (RFC 4959), or LOGIN
    with quoted strings or LITERAL+ (RFC 7888). None otherwise (no tag is used then)."""
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
    id_tag, lines = _id_line(session, upstream, up)
    tag = up.next_tag()
    return lines + tag + b" " + login_line, id_tag, tag


async def _authenticate_token(session: Session, up: UpstreamIMAP, prefix: bytes,
                              id_tag: bytes | None, tag: bytes,
                              creds: Credentials) -> events.TaggedResponse:
    """AUTHENTICATE XOAUTH2 / OAUTHBEARER with the client's own message (SASL-IR when offered).
    A failure comes as a `+ base64(json)` challenge (RFC 7628 3.2.2): kept in
    `up.sasl_challenge`, answered with the mechanism's dummy response, then the tagged NO."""
    mechanism = creds.mechanism.encode()
    if not up.has(b"AUTH=" + mechanism):
        raise UpstreamError(Failure.AUTH_REJECTED, f"upstream does not offer AUTH={creds.mechanism}")
    message = base64.b64encode(creds.password)
    if up.has(b"SASL-IR"):
        await up.conn.send(prefix + b"%s AUTHENTICATE %s %s\r\n" % (tag, mechanism, message))
    else:
        await up.conn.send(prefix + b"%s AUTHENTICATE %s\r\n" % (tag, mechanism))
    if id_tag is not None:
        await wait_tagged(up, id_tag)
    if not up.has(b"SASL-IR"):
        if not isinstance(await next_response(up), events.ContinuationRequest):
            raise UpstreamError(Failure.PROTOCOL, "no continuation for AUTHENTICATE")
        await up.conn.send(message + b"\r\n")
    while True:
        event = await next_response(up)
        if isinstance(event, events.ContinuationRequest):
            up.sasl_challenge = event.text
            await up.conn.send(dummy_response(creds.mechanism) + b"\r\n")
            return await wait_tagged(up, tag)
        if isinstance(event, events.TaggedResponse) and event.tag == tag:
            if event.code == b"CAPABILITY" and event.code_args:
                up.capabilities = capabilities_from(event.code_args)
            return event
        if isinstance(event, events.UntaggedResponse) and event.name == b"BYE":
            raise UpstreamError(Failure.UPSTREAM, "upstream said BYE")


async def _send_login(up: UpstreamIMAP, prefix: bytes, tag: bytes, creds: Credentials) -> None:
    """LOGIN with quoted strings, or literals when the values need them (RFC 3501 4.3)."""
    user = creds.user.encode()
    parts = [prefix + tag + b" LOGIN"]
    for value in (user, creds.password):
        encoded = writer.astring(value)
        if encoded.startswith(b"{"):
            if up.has(b"LITERAL+"):
                parts[-1] += b" " + writer.literal_plus(value)
                continue
            parts[-1] += b" {%d}\r\n" % len(value)
            parts.append(value)
        else:
            parts[-1] += b" " + encoded
    parts[-1] += b"\r\n"
    for i, part in enumerate(parts):
        await up.conn.send(part)
        if i < len(parts) - 1:
            event = await next_response(up)
            if not isinstance(event, events.ContinuationRequest):
                raise UpstreamError(Failure.AUTH_REJECTED, "upstream refused the login literal")
