"""A POP3 client session for the gateway: connect, TLS, CAPA, login and commands, over trio.

Theory of operation
-------------------
`Pop3Client.connect(upstream)` opens TCP to the upstream's ``pop3:`` service (TCP_NODELAY,
`CONNECT_TIMEOUT`), wraps it in TLS first (``tls: implicit``) or after STLS (``tls: starttls``,
RFC 2595), reads the greeting and CAPA, and hands back a session ready for `login()`
(USER/PASS, or AUTH PLAIN with an initial response when only SASL PLAIN is offered, RFC 5034).

* Framing is `proxy.pop3.ResponseParser` (sans-IO, dot-unstuffing on): `send()` tells the
  parser how many replies to expect and whether each is multi-line, so pipelined commands
  (RFC 2449 6.6) are framed right; `next_event()` feeds it `receive_some()` data until it
  yields an event.  This module only moves bytes.
* After STLS, bytes the server sent in clear before the handshake are refused (they must not
  pass for TLS-protected data), and CAPA is asked again (RFC 2595 4).
* Every failure is a `FetchError(reason)` with a bounded `reason` (`REASONS`) and a sanitized
  `detail`: connect, tls, auth, protocol (a reply that breaks the framing), truncated (the
  connection closed inside a multi-line reply), timeout (`RESPONSE_TIMEOUT` per reply) and
  upstream (a refusal or a lost connection).  A reset while reading is treated like a close,
  so the parser reports what was cut.

Resource handling: `connect()` closes the stream itself when the session setup fails; after
that the caller owns the client and must `aclose()` it (`quit()` never raises, it reports
whether the server confirmed QUIT, which is when DELEs take effect, RFC 1939 6).
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
from typing import Any

import trio

from .. import logs
from ..net.tls import client_context
from ..config import Upstream
from ..pop3 import NEED_DATA, ProtocolError, ResponseParser, events, writer

__all__ = ["CONNECT_TIMEOUT", "RESPONSE_TIMEOUT", "REASONS", "FetchError", "Pop3Client"]

CONNECT_TIMEOUT = 30.0
RESPONSE_TIMEOUT = 120.0            # per reply; a RETR of a large message is one reply
RECEIVE_SIZE = 256 * 1024

# FetchError.reason values: a bounded label for logs and metrics.
REASONS = frozenset({"config", "connect", "tls", "auth", "protocol", "truncated", "timeout",
                     "upstream"})


class FetchError(Exception):
    """A sync failed; `reason` is one of REASONS, `detail` is safe to log (sanitized, short)."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---- transport ----------------------------------------------------------------------------------

async def _start_tls(stream: trio.abc.Stream, upstream: Upstream) -> trio.SSLStream:
    tls = trio.SSLStream(stream, client_context(upstream, warn=False),
                         server_hostname=upstream.server_name or upstream.host)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise FetchError("timeout", "TLS handshake timed out") from None
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(stream)
        raise FetchError("tls", logs.sanitize(str(exc.__cause__ or exc))) from None
    return tls


def _tempfail(line: events.StatusLine) -> bool:
    """RFC 3206 / RFC 2449 8.1: [SYS/TEMP], [IN-USE] and [LOGIN-DELAY] mean "not now"."""
    return line.code is not None and line.code.upper().startswith(
        (b"SYS/TEMP", b"IN-USE", b"LOGIN-DELAY"))


class Pop3Client:
    """A POP3 client session over one trio stream, framed by `proxy.pop3.ResponseParser`."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.parser = ResponseParser(unstuff=True)
        self.capabilities: dict[str, list[str]] = {}

    @classmethod
    async def connect(cls, upstream: Upstream) -> Pop3Client:
        service = upstream.pop3
        if service is None:
            raise FetchError("config", "upstream has no pop3: section")
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(upstream.host, service.port)
        except (OSError, trio.TooSlowError) as exc:
            raise FetchError("connect", logs.sanitize(str(exc) or type(exc).__name__)) from None
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if service.tls == "implicit":
            stream = await _start_tls(stream, upstream)
        client = cls(stream)
        try:
            await client.expect_ok("greeting")
            await client.read_capabilities()
            if service.tls == "starttls":
                await client.send(writer.command(b"STLS"))
                await client.expect_ok("STLS", "tls")
                if client.parser.buffered:   # bytes sent in clear must not pass for TLS-protected
                    raise FetchError("tls", "unexpected data after the STLS reply")
                client.stream = await _start_tls(client.stream, upstream)
                await client.read_capabilities()   # RFC 2595 4: forget what was said in clear
        except BaseException:
            await client.aclose()
            raise
        return client

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send(self, data: bytes, multiline: bool = False, count: int = 1) -> None:
        """Write `count` commands at once (`data` holds all of them), all framed alike."""
        for _ in range(count):
            self.parser.expect(multiline)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise FetchError("upstream", f"connection lost while sending: {type(exc).__name__}") from None

    async def next_event(self) -> Any:
        while True:
            try:
                event = self.parser.next_event()
            except ProtocolError as exc:
                raise FetchError("protocol", f"{exc.kind}: {exc}") from None
            if event is not NEED_DATA:
                return event
            try:
                with trio.fail_after(RESPONSE_TIMEOUT):
                    data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.TooSlowError:
                raise FetchError("timeout", f"no reply within {RESPONSE_TIMEOUT:.0f}s") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                data = b""   # treat a reset like a close: the parser reports what was cut
                logs.event("gateway_fetch_connection_lost", logging.DEBUG, error=type(exc).__name__)
            self.parser.receive_data(data)

    async def status(self, what: str) -> events.StatusLine:
        event = await self.next_event()
        if isinstance(event, events.ConnectionClosed):
            raise FetchError("upstream", f"connection closed awaiting the reply to {what}")
        if not isinstance(event, events.StatusLine):
            raise FetchError("protocol", f"unexpected {type(event).__name__} in reply to {what}")
        return event

    async def expect_ok(self, what: str, reason: str = "upstream") -> events.StatusLine:
        line = await self.status(what)
        if not line.ok:
            if reason == "auth" and _tempfail(line):  # RFC 3206: busy, not a wrong password
                reason = "upstream"
            raise FetchError(reason, f"{what} refused: {logs.sanitize(line.text)}")
        return line

    async def body(self, what: str) -> bytes:
        """The rest of a multi-line reply whose +OK was read; FetchError if it is cut short."""
        chunks = []
        while True:
            event = await self.next_event()
            if isinstance(event, events.MultilineData):
                chunks.append(bytes(event.data))
            elif isinstance(event, events.MultilineEnd):
                return b"".join(chunks)
            elif isinstance(event, events.ConnectionClosed):
                raise FetchError("truncated", f"connection closed inside the reply to {what}")
            else:
                raise FetchError("protocol", f"unexpected {type(event).__name__} inside {what}")

    async def multiline(self, name: bytes, *args: bytes) -> bytes | None:
        """Send a multi-line command; its body, or None on -ERR."""
        await self.send(writer.command(name, *args), multiline=True)
        if not (await self.status(name.decode())).ok:
            return None
        return await self.body(name.decode())

    async def read_capabilities(self) -> None:
        listing = await self.multiline(b"CAPA")
        self.capabilities = {}
        for line in (listing or b"").decode("ascii", "replace").splitlines():
            words = line.split()
            if words:
                self.capabilities[words[0].upper()] = words[1:]

    async def login(self, user: str, password: str) -> None:
        if any(c in user + password for c in "\r\n\0"):
            raise FetchError("auth", "user name or password contains CR, LF or NUL")
        sasl = [m.upper() for m in self.capabilities.get("SASL", [])]
        if "USER" in self.capabilities or not self.capabilities or "PLAIN" not in sasl:
            await self.send(writer.command(b"USER", user.encode()))
            await self.expect_ok("USER", "auth")
            await self.send(writer.command(b"PASS", password.encode()))
            await self.expect_ok("PASS", "auth")
            return
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        await self.send(writer.command(b"AUTH", b"PLAIN", token))   # RFC 5034 initial response
        line = await self.status("AUTH")
        if not line.ok:
            raise FetchError("upstream" if _tempfail(line) else "auth", "AUTH PLAIN refused")

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    async def quit(self) -> bool:
        """QUIT; True when the server confirmed it (RFC 1939 6: then, and only then, DELEs apply)."""
        try:
            await self.send(writer.command(b"QUIT"))
            return (await self.status("QUIT")).ok
        except FetchError as exc:
            logs.event("gateway_fetch_quit_failed", logging.WARNING, reason=exc.reason,
                       detail=exc.detail)
            return False
