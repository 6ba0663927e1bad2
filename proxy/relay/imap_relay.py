"""The IMAP relay after login on trio: two pumps in one nursery driving the relay core.

Theory of operation: the protocol logic is the sans-IO ImapRelayCore (imap_core.py): parsers in
framing mode, held lines, commands in flight, the proxy's own replies and timers. This driver
only moves bytes for it. The client pump reads a chunk, hands it to the core and writes what
the core accepted upstream with one write; the upstream pump forwards each chunk to the client
first and then lets the core parse it (parsing never delays the bytes); after either, the
proxy's own lines the core has for the client are written. One watchdog task sleeps until the
core's nearest timer (`due()`) or a drain and calls `timer()` / `drained()`; the client pump
runs in the nursery's own task, so a session costs two spawned tasks.

COMPRESS=DEFLATE (RFC 4978) is the one thing only this driver does: once the upstream accepts
it both streams are still forwarded unchanged, and the core parses an inflated copy fed here
a bounded slice at a time (imap_compress.py); the proxy's own lines become stored blocks.

Either pump ending (EOF, error, timeout) cancels the nursery, and both connections are closed by
the caller, so no connection is ever left open on one side. A LOGOUT the core answered itself
(`answer_logout`) ends the pumps too; the upstream's answer is then read to its close, bounded,
after the client's connection was closed (`_upstream_logged_out`). With `relay.engine: epoll` a
plain-TCP session runs in the engine instead (engine_imap.py), over the same core.
"""

from __future__ import annotations

import zlib

import trio

from .. import logs
from ..imap import CommandParser, Limits
from ..net.conn import Conn
from ..session.context import Session
from ..session.failures import Close
from .engine import Engine
from .engine_entry import run_in_engine
from .engine_imap import ImapEngineSession
from .engine_logout import LOGOUT_WAIT
from .imap_compress import InflatedCopy
from .imap_core import ImapRelayCore
from .imap_upstream import UpstreamIMAP


def client_parser(session: Session, upstream: UpstreamIMAP) -> CommandParser:
    """The relay's parser of the client's commands, for the upstream's capabilities."""
    lim = session.listener.limits
    literal_plus = upstream.has(b"LITERAL+")
    return CommandParser(Limits(
        max_line=lim.max_line, max_literal=lim.max_literal, max_depth=lim.max_depth,
        max_nonsync_literal=lim.max_literal if literal_plus else lim.max_nonsync_literal,
        max_id_line=lim.id_line_length))   # RFC 2971 3.3


class ImapRelay:
    def __init__(self, session: Session, client: Conn, client_leftover: bytes,
                 upstream: UpstreamIMAP):
        # The login's parser goes on (same limits, between two responses); it may hold the
        # start of what follows the login reply, which is forwarded before it is parsed.
        upstream_parser = upstream.channel.parser
        self._upstream_leftover = upstream_parser.take_unconsumed()
        self._attach(session, client, upstream.conn, ImapRelayCore(
            session, client_parser(session, upstream), upstream_parser, client_leftover,
            trio.current_time()))

    @classmethod
    def resumed(cls, session: Session, client: Conn, upstream: Conn,
                core: ImapRelayCore) -> ImapRelay:
        """The task path going on with a core the engine's login started (engine_login.py),
        handed back at COMPRESS."""
        relay = cls.__new__(cls)
        relay._upstream_leftover = b""
        relay._attach(session, client, upstream, core)
        return relay

    def _attach(self, session: Session, client: Conn, upstream: Conn,
                core: ImapRelayCore) -> None:
        self.session = session
        self.client = client
        self.upstream = upstream
        self.core = core
        self._cancel = trio.CancelScope()
        self._sleep: trio.CancelScope | None = None   # the watchdog's sleep (a drain wakes it)
        self._inflate_up: InflatedCopy | None = None     # client -> upstream, once compressed
        self._inflate_down: InflatedCopy | None = None   # upstream -> client, once compressed

    async def run(self, engine: bool = True) -> None:
        try:
            if engine and await run_in_engine(self.session, self.client, self.upstream,
                                              self._in_engine):
                return   # (else: not for the engine, or handed back at COMPRESS)
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._upstream_to_client)
                nursery.start_soon(self._watchdog)
                await self._client_to_upstream()
            if self.core.logged_out:
                await self._upstream_logged_out()
        finally:  # also when cut at shutdown_timeout
            self.core.settle()

    async def _upstream_logged_out(self) -> None:
        """The LOGOUT the core answered went upstream too: the client's connection is closed
        first (it has its BYE and OK), then the upstream's answer is read to its close, at
        most LOGOUT_WAIT (the engine does the same off any task: engine_logout.py)."""
        await self.client.linger()
        with trio.move_on_after(LOGOUT_WAIT):
            while await self.upstream.receive():
                pass

    def _in_engine(self, engine: Engine, client: Conn, client_fd: int, upstream: Conn,
                   upstream_fd: int) -> ImapEngineSession:
        leftover, self._upstream_leftover = self._upstream_leftover, b""
        return ImapEngineSession(self.core, leftover, engine, client, client_fd, upstream,
                                 upstream_fd)

    # -- timers and drain (SIGTERM) -----------------------------------------------------------
    async def _watchdog(self) -> None:
        """Sleep until the core's nearest timer (or a drain) and let it act; timers are re-read
        after each wake-up, so activity pushes them back without touching this task."""
        core = self.core
        drain = self.session.runtime.drain
        drain.subscribe(self._wake)
        try:
            while core.end is None:
                now = trio.current_time()
                if drain.is_set() and not core.draining:
                    core.drained()
                elif now >= core.due():
                    core.timer(now)
                else:
                    with trio.CancelScope(deadline=core.due()) as self._sleep:
                        await trio.sleep_forever()
                    continue
                await self._say(core.take_replies())
            self._cancel.cancel()
        finally:
            drain.unsubscribe(self._wake)

    def _wake(self) -> None:
        """The drain started: the watchdog looks at once."""
        if self._sleep is not None:
            self._sleep.cancel()

    async def _say(self, lines: bytes) -> None:
        """The proxy's own lines to the client; under COMPRESS, a stored block of the
        upstream's DEFLATE stream where one may start (or nothing)."""
        if not lines:
            return
        inflated = self._inflate_down
        if inflated is None:
            await self.client.send(lines)
        elif inflated.at_block_boundary:
            await self.client.send(inflated.own_block(lines))

    # -- client -> upstream ------------------------------------------------------------------
    async def _client_to_upstream(self) -> None:
        core = self.core
        try:
            # commands pipelined behind the login first
            if core.held.held and not await self._sent(core.client_input()):
                return
            while True:
                if core.compress is not None and not await self._compress_answered():
                    return
                data = await self.client.receive()
                up = core.client_data(data, trio.current_time())
                if up and self._inflate_up is not None and not await self._client_inflated(up):
                    up = b""
                if not await self._sent(up):
                    return
                del data, up  # an idle session holds no chunk while it waits
        finally:
            self._cancel.cancel()

    async def _sent(self, up: bytes | bytearray) -> bool:
        """The core's own replies to the client (decided at a response boundary: written
        first), then what it accepted upstream; False once the session ends."""
        core = self.core
        await self._say(core.take_replies())
        if up and not await self.upstream.send(up):
            core.finish(Close.UPSTREAM_CLOSED)
        if core.logout_tag is not None and core.answer_logout(written=True):
            await self._say(core.take_replies())
        return core.end is None

    async def _compress_answered(self) -> bool:
        """Wait for the upstream's verdict on COMPRESS, then parse what the client sent after
        the command accordingly (RFC 4978 3: compressed from the byte after the OK's CRLF)."""
        core = self.core
        asked = core.compress
        assert asked is not None
        await asked.answered.wait()
        core.compress = None
        if asked.ok:
            self._inflate_up = InflatedCopy(self.session.listener.limits.inflate_chunk)
            after = core.held.accepted(0)   # = asked.after, compressed: forwarded as it is
            core.bytes_up.add(len(after))
            ok = await self._client_inflated(asked.after)
            return await self._sent(after if ok else b"")
        core.held.reread(len(asked.after))
        if asked.after:
            core.client_parser.receive_data(asked.after)
            return await self._sent(core.client_input())
        return True

    async def _client_inflated(self, data: bytes | bytearray) -> bool:
        """Parse the inflated copy of a compressed chunk, a bounded slice at a time."""
        assert self._inflate_up is not None
        try:
            return await self._inflate_up.feed(bytes(data), self._client_plain)
        except zlib.error:
            self._bad_deflate("client_protocol_error")
            self.core.last_words(b"* BYE Corrupt compressed data.\r\n")
            self.core.finish(Close.PROTOCOL_ERROR)
            return False

    async def _client_plain(self, plain: bytes) -> bool:
        return self.core.client_plain(plain)

    def _bad_deflate(self, event: str, **fields: object) -> None:
        self.session.runtime.metrics.protocol_errors.labels("imap", "bad_deflate").inc()
        logs.event(event, **self.session.log_fields(), **fields, kind="bad_deflate")

    # -- upstream -> client ------------------------------------------------------------------
    async def _upstream_to_client(self) -> None:
        try:
            data, self._upstream_leftover = self._upstream_leftover, b""
            if data and not await self._down(data):
                return
            while True:
                data = b""  # an idle session holds no chunk while it waits
                data = await self.upstream.receive()
                if not await self._down(data):
                    return
        finally:
            self._cancel.cancel()

    async def _down(self, data: bytes) -> bool:
        """Forward first, then let the core look; False once the session ends."""
        core = self.core
        if core.logged_out:   # the proxy answered the LOGOUT: the upstream's is not relayed
            return False
        if data and not await self.client.send(data):
            core.finish(Close.CLIENT_CLOSED)
            return False
        compressed = core.upstream_data(data, trio.current_time())
        if core.compressed and self._inflate_down is None:
            self._inflate_down = InflatedCopy(self.session.listener.limits.inflate_chunk)
        if compressed and await self._upstream_inflated(compressed):
            core.upstream_parsed()
        await self._say(core.take_replies())
        return core.end is None

    async def _upstream_inflated(self, data: bytes) -> bool:
        assert self._inflate_down is not None
        try:
            return await self._inflate_down.feed(data, self._upstream_plain)
        except zlib.error:
            self._bad_deflate("upstream_protocol_error", upstream=self.session.upstream)
            self.core.last_words(b"* BYE Upstream protocol error.\r\n")
            self.core.finish(Close.UPSTREAM_PROTOCOL_ERROR)
            return False

    async def _upstream_plain(self, plain: bytes) -> bool:
        return self.core.upstream_plain(plain)
