"""The proxy as an IMAP client of the upstream: greeting, STARTTLS, ID forwarding, login.

Theory of operation: the proxy uses its own tags (`P1`, `P2`, ...) for what it sends on its own
behalf; the client later gets the verdict under its own tag. What the upstream answers before
login is read and decided by the sans-IO machine the relay engine's login uses too
(imap_login_machine.py: greeting, capabilities, the pipelined ID and login, the verdict, an early
login sent once more); this module does its I/O, and the dialogues only trio runs: STARTTLS, a
LOGIN with synchronising literals, AUTHENTICATE with a bearer token.

STARTTLS to the upstream (RFC 3501 6.2.1, RFC 2595 3.1): bytes the server sent after its OK and
before the handshake are a response-injection attempt (CVE-2011-0411 class): abort. A PREAUTH
greeting where TLS is required aborts too: the session would never be encrypted. Capabilities
are re-read after TLS; nothing from before the handshake is trusted.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..config import ImapService, Upstream
from ..imap import NEED_DATA, Limits, ResponseParser, events, writer
from ..net.conn import Conn
from ..session.channel import Channel
from ..session.context import Session
from ..session.failures import Failure
from ..session.login import dial
from ..session.oauth_sasl import TOKEN_MECHANISMS, dummy_response
from ..session.sasl import Credentials
from ..session.starttls import upgrade_upstream
from ..session.upstream import UpstreamError, adopt, deadline, service
from ..session.warm_pool import WarmConnection
from .imap_capabilities import capabilities_from, relayable, upper_set
from .imap_login_machine import GREETED, Failed, ImapLogin, Send, Unsendable, Verdict, id_line

__all__ = ["UpstreamIMAP", "advance", "capabilities_from", "command", "connect", "from_warm",
           "greet", "id_fields", "login", "relayable", "upstream_limits"]

UPSTREAM_LIMITS_LINE = 64 * 1024 * 1024  # a long SEARCH result is one line


_UPSTREAM_LIMITS = Limits(max_line=UPSTREAM_LIMITS_LINE, max_literal=2**62,
                          max_nonsync_literal=2**62)


def upstream_limits() -> Limits:
    return _UPSTREAM_LIMITS   # frozen: one for every session


@dataclass
class UpstreamIMAP:
    channel: Channel[ResponseParser]
    capabilities: tuple[bytes, ...] = ()
    tag_counter: int = 0
    sasl_challenge: bytes | None = None  # a token login's error challenge (base64 JSON)
    dialogue: ImapLogin | None = None   # the login's machine, until the login's verdict
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

    @property
    def parser(self) -> ResponseParser:
        return self.channel.parser

    def next_tag(self) -> bytes:
        self.tag_counter += 1
        return b"P%d" % self.tag_counter

    def has(self, capability: bytes) -> bool:
        capabilities, upper = self._upper_memo
        if capabilities is not self.capabilities:   # (reassigned, never changed in place)
            capabilities = self.capabilities
            upper = upper_set(capabilities)
            self._upper_memo = (capabilities, upper)
        return capability.upper() in upper

    def machine(self) -> ImapLogin:
        """The login's machine; a greeted one for a connection that has none (warm, after
        STARTTLS)."""
        if self.dialogue is None:
            self.dialogue = ImapLogin(self, greeted=True)
        return self.dialogue


async def advance(up: UpstreamIMAP) -> object:
    """The machine's next step (imap_login_machine.py), reading as many chunks as that takes;
    its Failed is raised as UpstreamError. Bounded by the caller's deadline()."""
    machine = up.machine()
    while True:
        found = machine.next_step()
        if found is NEED_DATA:
            machine.receive_data(await up.conn.receive())
        elif isinstance(found, Failed):
            raise UpstreamError(found.failure, found.detail)
        else:
            return found


async def command(up: UpstreamIMAP, line: bytes) -> events.TaggedResponse:
    """Send one tagged command (the caller built `line` with up.next_tag()) and wait for its
    completion, keeping untagged CAPABILITY data."""
    tag = line.split(b" ", 1)[0]
    up.machine().expect(tag)
    await up.conn.send(line)
    reply = await advance(up)
    assert isinstance(reply, events.TaggedResponse)
    return reply


async def connect(session: Session, name: str, upstream: Upstream, steps: deadline,
                  creds: Credentials | None = None, *, warm: bool = True) -> UpstreamIMAP:
    """Connect, read the greeting, STARTTLS if configured, re-read capabilities; bounded by
    `steps`, the caller's deadline for the whole upstream dialogue (at its "connect" step).

    With `creds`, when an earlier greeting of this upstream announced its capabilities and no
    STARTTLS is to come (credentials never go out before it), the login (and the ID) is sent
    at once, built for those capabilities: the greeting and the login's reply then come back
    in one round trip instead of two (session/early_login.py). `login()` collects its verdict
    (the machine's). The upstream's `imap.pipelined_login: false` turns this off: nothing is
    sent before the greeting.

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
    machine = up.dialogue = ImapLogin(up, tls_required=tls != "none")
    try:
        if creds is not None and pipelined:
            capabilities = known.early("imap", name)
            if capabilities:
                early = machine.begin_login(creds, id_fields(session, upstream), capabilities)
                if early is not None:
                    await up.conn.send(early)
        steps.step(timeouts.upstream_connect, "greeting")
        greeted = await advance(up)
        assert greeted is GREETED
        if pipelined:
            known.learnt("imap", name, machine.greeting)
        if tls == "starttls" or not (up.capabilities or machine.early):
            steps.step(timeouts.upstream_response, "capabilities")
            if tls == "starttls":
                await _starttls(session, name, up)
            if not up.capabilities:
                await command(up, b"%s CAPABILITY\r\n" % up.next_tag())
        return up
    except BaseException as exc:
        if machine.early and not machine.greeted and not up.warm:   # (warm: a stale one, retried)
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
    up.dialogue = ImapLogin(up)
    await advance(up)
    if not up.capabilities:
        await command(up, b"%s CAPABILITY\r\n" % up.next_tag())
    up.dialogue = None


async def _starttls(session: Session, name: str, up: UpstreamIMAP) -> None:
    if up.capabilities and not up.has(b"STARTTLS"):
        session.runtime.metrics.starttls.labels("upstream", "imap", "refused").inc()
        raise UpstreamError(Failure.TLS, "upstream does not offer STARTTLS")
    reply = await command(up, b"%s STARTTLS\r\n" % up.next_tag())
    await upgrade_upstream(session, name, up.conn, reply.status == b"OK",
                           up.channel.parser.buffered)
    up.channel.parser = ResponseParser(upstream_limits())
    up.capabilities = ()  # RFC 3501 6.2.1: discard what was learnt before TLS


def id_fields(session: Session, upstream: Upstream) -> bytes | None:
    """Dovecot's ID extension fields that carry the real client address (login_trusted_networks),
    when this upstream is told it (`forward_client_ip`)."""
    if not upstream.forward_client_ip:
        return None
    fields = (b"x-originating-ip", session.client_ip.encode(),
              b"x-originating-port", str(session.client_port).encode(),
              b"x-connected-ip", session.local_ip.encode(),
              b"x-connected-port", str(session.local_port).encode())
    return b" ".join(writer.quoted(f) for f in fields)


async def login(session: Session, upstream: Upstream, up: UpstreamIMAP,
                creds: Credentials) -> events.TaggedResponse:
    """ID (when forwarding the client address) and the login, pipelined in one write when the
    capabilities allow it; bounded by the caller's deadline(). A login sent early (`connect`)
    is answered here, and sent once more when the machine says so. An OK comes with the
    capabilities to relay (asked with CAPABILITY when it carried none)."""
    machine = up.machine()
    if not machine.early:
        if creds.mechanism in TOKEN_MECHANISMS:
            return await _after_ok(up, await _authenticate_token(session, upstream, up, creds))
        lines = machine.begin_login(creds, id_fields(session, upstream))
        if lines is None:
            return await _after_ok(up, await _login_in_parts(session, upstream, up, creds))
        await up.conn.send(lines)
    while True:
        found = await advance(up)
        if isinstance(found, Send):
            await up.conn.send(found.data)
        elif isinstance(found, Verdict):
            up.dialogue = None
            return found.reply
        else:   # sent once more, but not in one write: the ordinary way
            assert found is Unsendable
            return await _after_ok(up, await _login_in_parts(session, upstream, up, creds))


async def _after_ok(up: UpstreamIMAP, reply: events.TaggedResponse) -> events.TaggedResponse:
    """An OK without a CAPABILITY code is followed by CAPABILITY (the client's OK carries
    them, RFC 3501 7.1)."""
    if reply.status == b"OK" and reply.code != b"CAPABILITY":
        await command(up, b"%s CAPABILITY\r\n" % up.next_tag())
    up.dialogue = None
    return reply


async def _login_in_parts(session: Session, upstream: Upstream, up: UpstreamIMAP,
                          creds: Credentials) -> events.TaggedResponse:
    """LOGIN with synchronising literals (no LITERAL+), or none possible (LOGINDISABLED)."""
    if up.has(b"LOGINDISABLED"):
        raise UpstreamError(Failure.UPSTREAM, "upstream offers no usable login method")
    _, lines = id_line(up, id_fields(session, upstream))
    tag = up.next_tag()
    await _send_login(up, lines, tag, creds)
    return await _completion(up, tag)


async def _completion(up: UpstreamIMAP, tag: bytes) -> events.TaggedResponse:
    machine = up.machine()
    machine.continuations = False
    machine.expect(tag)
    reply = await advance(up)
    assert isinstance(reply, events.TaggedResponse)
    return reply


async def _continuation(up: UpstreamIMAP, tag: bytes) -> object:
    """The next continuation request, or the completion of `tag`."""
    machine = up.machine()
    machine.continuations = True
    machine.expect(tag)
    try:
        return await advance(up)
    finally:
        machine.continuations = False


async def _authenticate_token(session: Session, upstream: Upstream, up: UpstreamIMAP,
                              creds: Credentials) -> events.TaggedResponse:
    """AUTHENTICATE XOAUTH2 / OAUTHBEARER with the client's own message (SASL-IR when offered).
    A failure comes as a `+ base64(json)` challenge (RFC 7628 3.2.2): kept in
    `up.sasl_challenge`, answered with the mechanism's dummy response, then the tagged NO."""
    mechanism = creds.mechanism.encode()
    if not up.has(b"AUTH=" + mechanism):
        raise UpstreamError(Failure.AUTH_REJECTED, f"upstream does not offer AUTH={creds.mechanism}")
    _, prefix = id_line(up, id_fields(session, upstream))
    tag = up.next_tag()
    message = base64.b64encode(creds.password)
    if up.has(b"SASL-IR"):
        await up.conn.send(prefix + b"%s AUTHENTICATE %s %s\r\n" % (tag, mechanism, message))
    else:
        await up.conn.send(prefix + b"%s AUTHENTICATE %s\r\n" % (tag, mechanism))
        if not isinstance(await _continuation(up, tag), events.ContinuationRequest):
            raise UpstreamError(Failure.PROTOCOL, "no continuation for AUTHENTICATE")
        await up.conn.send(message + b"\r\n")
    found = await _continuation(up, tag)
    if isinstance(found, events.ContinuationRequest):
        up.sasl_challenge = found.text
        await up.conn.send(dummy_response(creds.mechanism) + b"\r\n")
        return await _completion(up, tag)
    assert isinstance(found, events.TaggedResponse)
    return found


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
            if not isinstance(await _continuation(up, tag), events.ContinuationRequest):
                raise UpstreamError(Failure.AUTH_REJECTED, "upstream refused the login literal")
