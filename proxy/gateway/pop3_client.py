"""A POP3 client session for the gateway: connect, TLS, CAPA, login and commands, over trio.

Theory of operation
-------------------
`Pop3Client.connect(upstream)` opens TCP to the upstream's ``pop3:`` service (TCP_NODELAY,
`CONNECT_TIMEOUT`), wraps it in TLS first (``tls: implicit``) or after STLS (``tls: starttls``,
RFC 2595), reads the greeting and CAPA, and hands back a session ready for `login()`
(USER/PASS, or AUTH PLAIN with an initial response when only SASL PLAIN is offered, RFC 5034).

* Framing is `proxy.pop3.ResponseParser` (sans-IO, dot-unstuffing on): `send()` tells the
  parser how many replies to expect and whether each is multi-line, so pipelined commands
  (RFC 2449 6.6) are framed right; `next_event()` is the session Channel's (receive and feed
  until the parser yields an event), bounded by `ReplyLimits.timeout`.
* Time and size (`ReplyLimits`, from ``gateway.limits``): a status line must come within
  `timeout` (``pop3_reply_timeout``); a multi-line reply's body within `timeout` plus one
  second per `min_rate` bytes received (``pop3_min_rate``), counted up to `max_body`: a server
  dripping a byte a second (slowloris) or never ending a reply fails the sync instead of holding
  the account's sync lock for ever, while a big message on a slow link still arrives. A RETR
  body past `max_body` (``max_message_bytes``) is read to its end and dropped (`body` returns
  None: the fetcher leaves that message upstream); a listing (UIDL, LIST, CAPA) past
  `max_listing` (``max_listing_bytes``, its own bound: a mailbox of many small messages has a
  listing longer than its largest message) fails the sync at once. Memory stays bounded by
  the larger of the two.
* A sync's budget (``gateway.limits.sync_budget``, fetcher.py): past `cut_at` (trio time; none
  by default) every wait for the upstream ends with `SyncCut`, mid-reply: the caller drops the
  connection without QUIT (RFC 1939 6: no DELE of the session takes effect).
* After STLS, bytes the server sent in clear before the handshake are refused (they must not
  pass for TLS-protected data), and CAPA is asked again (RFC 2595 4).
* Opening the connection (TCP, TLS) is `proxy.session.upstream`, shared with the relay and the
  health checks, and every failure is that module's `UpstreamError` carrying a
  `proxy.session.failures.Failure`: connect, tls, auth_rejected, protocol (a reply that breaks
  the framing), upstream (a refusal, a lost connection, or one closed inside a multi-line reply),
  timeout (`RESPONSE_TIMEOUT` per reply, `CONNECT_TIMEOUT` to connect) and internal (an upstream
  with no pop3: section).  `detail` is sanitized and safe to log.  A reset while reading reads
  as a close (proxy.net.conn), so the parser reports what was cut.

Resource handling: `connect()` closes the stream itself when the session setup fails; after
that the caller owns the client and must `aclose()` it (`quit()` never raises, it reports
whether the server confirmed QUIT, which is when DELEs take effect, RFC 1939 6).
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass
from types import TracebackType

import trio

from .. import logs
from ..config import Upstream
from ..net.conn import Conn
from ..pop3 import NEED_DATA, ProtocolError, ResponseParser, events, writer
from ..session.channel import Channel
from ..session.failures import Failure
from ..session.upstream import UpstreamError, built_context, deadline, open_upstream, service, start_tls

__all__ = ["CONNECT_TIMEOUT", "RESPONSE_TIMEOUT", "Pop3Client", "ReplyLimits", "SyncCut"]

CONNECT_TIMEOUT = 30.0
RESPONSE_TIMEOUT = 120.0            # a status line; a body: plus a second per min_rate bytes
MIN_RATE = 64 * 1024                # bytes/s of a long body, past its first RESPONSE_TIMEOUT
MAX_BODY = 100 * 1024 * 1024        # bytes of one message
MAX_LISTING = 64 * 1024 * 1024      # bytes of one listing (UIDL: ~2.5 million messages)


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """How long and how big an upstream's replies may be (``gateway.limits.pop3_reply_timeout``,
    ``pop3_min_rate``, ``max_message_bytes``, ``max_listing_bytes``)."""

    timeout: float = RESPONSE_TIMEOUT
    min_rate: int = MIN_RATE
    max_body: int = MAX_BODY
    max_listing: int = MAX_LISTING


class SyncCut(Exception):
    """A wait for the upstream ran past `Pop3Client.cut_at` (the sync's budget) and was cut,
    maybe mid-reply: the session cannot go on, drop it without QUIT."""


class _cut:  # noqa: N801 - used like trio.move_on_at
    """A cancel scope ending at `at` with SyncCut."""

    __slots__ = ("scope",)

    def __init__(self, at: float):
        self.scope = trio.CancelScope(deadline=at)

    def __enter__(self) -> None:
        self.scope.__enter__()

    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.scope.__exit__(etype, exc, tb)
        if self.scope.cancelled_caught:
            raise SyncCut("the sync's budget ended a wait for the upstream") from None


def _tempfail(line: events.StatusLine) -> bool:
    """RFC 3206 / RFC 2449 8.1: [SYS/TEMP], [IN-USE] and [LOGIN-DELAY] mean "not now"."""
    return line.code is not None and line.code.upper().startswith(
        (b"SYS/TEMP", b"IN-USE", b"LOGIN-DELAY"))


class Pop3Client:
    """A POP3 client session over one connection, framed by `proxy.pop3.ResponseParser`."""

    def __init__(self, conn: Conn, limits: ReplyLimits | None = None):
        self.channel = Channel(conn, ResponseParser(unstuff=True), NEED_DATA)
        self.capabilities: dict[str, list[str]] = {}
        self.limits = limits or ReplyLimits(RESPONSE_TIMEOUT)
        self.cut_at = math.inf   # trio time: past it, waits for the upstream end with SyncCut

    @classmethod
    async def connect(cls, upstream: Upstream, limits: ReplyLimits | None = None) -> Pop3Client:
        port = service(upstream, "pop3")
        tls = port.tls
        context = await built_context(upstream, port)
        with deadline(CONNECT_TIMEOUT, "connect"):
            conn = await open_upstream(upstream, "pop3", context)
        client = cls(conn, limits)
        try:
            await client.expect_ok("greeting")
            await client.read_capabilities()
            if tls == "starttls":
                await client.send(writer.command(b"STLS"))
                await client.expect_ok("STLS", Failure.TLS)
                if client.channel.parser.buffered:  # sent in clear: must not pass for TLS-protected
                    raise UpstreamError(Failure.TLS, "unexpected data after the STLS reply")
                with deadline(CONNECT_TIMEOUT, "TLS handshake"):
                    conn.replace_stream(await start_tls(conn.stream, upstream, context))
                client.channel.parser = ResponseParser(unstuff=True, greeting=False)
                await client.read_capabilities()   # RFC 2595 4: forget what was said in clear
        except BaseException:
            await client.aclose()
            raise
        return client

    async def aclose(self) -> None:
        await self.channel.conn.aclose()

    async def send(self, data: bytes, multiline: bool = False, count: int = 1) -> None:
        """Write `count` commands at once (`data` holds all of them), all framed alike."""
        for _ in range(count):
            self.channel.parser.expect(multiline)
        if not await self.channel.send(data):
            raise UpstreamError(Failure.UPSTREAM, "connection lost while sending")

    async def next_event(self) -> object:
        with deadline(self.limits.timeout, "reply"), _cut(self.cut_at):
            return await self._event()

    async def _event(self) -> object:
        try:
            return await self.channel.next_event()
        except ProtocolError as exc:
            raise UpstreamError(Failure.PROTOCOL, f"{exc.kind}: {exc}") from None

    async def status(self, what: str) -> events.StatusLine:
        event = await self.next_event()
        if isinstance(event, events.ConnectionClosed):
            raise UpstreamError(Failure.UPSTREAM, f"connection closed awaiting the reply to {what}")
        if not isinstance(event, events.StatusLine):
            raise UpstreamError(Failure.PROTOCOL,
                                f"unexpected {type(event).__name__} in reply to {what}")
        return event

    async def expect_ok(self, what: str,
                        failure: Failure = Failure.UPSTREAM) -> events.StatusLine:
        line = await self.status(what)
        if not line.ok:
            if failure is Failure.AUTH_REJECTED and _tempfail(line):  # RFC 3206: busy, not wrong
                failure = Failure.AUTH_TEMPFAIL
            raise UpstreamError(failure, f"{what} refused: {logs.sanitize(line.text)}")
        return line

    async def body(self, what: str, drain: bool = True) -> bytes | None:
        """The rest of a multi-line reply whose +OK was read; UpstreamError if it is cut short or
        slower than `limits` allow. With `drain` (a message), past `limits.max_body`: None, once
        read to its end with its bytes dropped as they came; else (a listing), past
        `limits.max_listing`: UpstreamError at once."""
        limits = self.limits
        bound = limits.max_body if drain else limits.max_listing
        chunks: list[bytes] = []
        size = 0
        with deadline(limits.timeout, f"the end of {what} "
                      f"(pop3_reply_timeout, plus a second per pop3_min_rate bytes)") as limit, \
                _cut(self.cut_at):
            start = limit.scope.deadline
            while True:
                event = await self._event()
                if isinstance(event, events.MultilineData):
                    size += len(event.data)   # (an endless reply ends past max_body's time)
                    limit.scope.deadline = start + min(size, bound) / limits.min_rate
                    if size <= bound:
                        chunks.append(bytes(event.data))
                    elif drain:
                        chunks.clear()
                    else:
                        raise UpstreamError(Failure.PROTOCOL, f"the reply to {what} is longer "
                                            f"than max_listing_bytes ({bound})")
                elif isinstance(event, events.MultilineEnd):
                    return b"".join(chunks) if size <= bound else None
                elif isinstance(event, events.ConnectionClosed):
                    raise UpstreamError(Failure.UPSTREAM,
                                        f"connection closed inside the reply to {what} (truncated)")
                else:
                    raise UpstreamError(Failure.PROTOCOL,
                                        f"unexpected {type(event).__name__} inside {what}")

    async def multiline(self, name: bytes, *args: bytes) -> bytes | None:
        """Send a multi-line command; its body, or None on -ERR."""
        await self.send(writer.command(name, *args), multiline=True)
        if not (await self.status(name.decode())).ok:
            return None
        return await self.body(name.decode(), drain=False)

    async def read_capabilities(self) -> None:
        listing = await self.multiline(b"CAPA")
        self.capabilities = {}
        for line in (listing or b"").decode("ascii", "replace").splitlines():
            words = line.split()
            if words:
                self.capabilities[words[0].upper()] = words[1:]

    async def login(self, user: str, password: str) -> None:
        if any(c in user + password for c in "\r\n\0"):
            raise UpstreamError(Failure.AUTH_REJECTED,
                                "user name or password contains CR, LF or NUL")
        sasl = [m.upper() for m in self.capabilities.get("SASL", [])]
        if "USER" in self.capabilities or not self.capabilities or "PLAIN" not in sasl:
            await self.send(writer.command(b"USER", user.encode()))
            await self.expect_ok("USER", Failure.AUTH_REJECTED)
            await self.send(writer.command(b"PASS", password.encode()))
            await self.expect_ok("PASS", Failure.AUTH_REJECTED)
            return
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        await self.send(writer.command(b"AUTH", b"PLAIN", token))   # RFC 5034 initial response
        line = await self.status("AUTH")
        if not line.ok:
            raise UpstreamError(Failure.AUTH_TEMPFAIL if _tempfail(line) else Failure.AUTH_REJECTED,
                                "AUTH PLAIN refused")

    async def login_token(self, mechanism: str, message: bytes) -> None:
        """AUTH XOAUTH2 / OAUTHBEARER with `message` as the initial response (RFC 5034 4); a
        refused token comes as a `+ base64(json)` challenge (RFC 7628 3.2.2), answered with the
        dummy response, then -ERR. The token is never part of an error's text."""
        if mechanism.upper() not in [m.upper() for m in self.capabilities.get("SASL", [])]:
            raise UpstreamError(Failure.AUTH_REJECTED, f"upstream does not offer SASL {mechanism}")
        await self.send(writer.command(b"AUTH", mechanism.encode(), base64.b64encode(message)))
        event = await self.next_event()
        if isinstance(event, events.Continuation):
            dummy = b"AQ==\r\n" if mechanism.upper() == "OAUTHBEARER" else b"\r\n"
            if not await self.channel.send(dummy):   # the AUTH's reply is still expected
                raise UpstreamError(Failure.UPSTREAM, "connection lost while sending")
            event = await self.next_event()
        if not isinstance(event, events.StatusLine):
            raise UpstreamError(Failure.PROTOCOL, f"unexpected {type(event).__name__} to AUTH")
        if not event.ok:
            raise UpstreamError(Failure.AUTH_TEMPFAIL if _tempfail(event) else Failure.AUTH_REJECTED,
                                f"AUTH {mechanism} refused")

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    async def quit(self) -> bool:
        """QUIT; True when the server confirmed it (RFC 1939 6: then, and only then, DELEs apply)."""
        try:
            await self.send(writer.command(b"QUIT"))
            return (await self.status("QUIT")).ok
        except UpstreamError as exc:
            logs.event("gateway_fetch_quit_failed", logging.WARNING, reason=exc.failure.label,
                       detail=exc.detail)
            return False
