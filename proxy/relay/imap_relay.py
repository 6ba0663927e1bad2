"""The IMAP relay after login: two pumps in one nursery, parsing while relaying.

Theory of operation: each pump reads a chunk, feeds it to its sans-IO parser in framing mode
(line ends found with bytes.find, literal payloads skipped by count), looks at the few events that
matter, then forwards the same chunk with one write. Nothing is re-encoded, so the relay is as
transparent as a byte pipe while still knowing every command:

- client -> upstream: CommandStart starts a command in flight (imap_inflight.py); IDLE makes
  the next line a raw line so `DONE` ends it; LOGOUT is noted.
- upstream -> client: a TaggedResponse completes it (metrics: count by status, duration);
  literal payloads (FETCH bodies) pass by count.
- COMPRESS=DEFLATE (RFC 4978): once the upstream accepts it, both streams are still forwarded
  unchanged and the parsers read an inflated copy (imap_compress.py).

- Held lines (client -> upstream, uncompressed; held_lines.py): only what the parser accepted is
  forwarded, so a command whose *first* line part is a syntax error (bad tag or name, line over
  `max_line`, literal over its limit: what the framing parser checks) never reaches the
  upstream: the proxy answers the parser's tagged BAD (RFC 3501 7.1.3) between the upstream's
  responses, drops the command and the session goes on, as Dovecot does (`bad_commands` such
  answers end it). An error after a command's first literal cannot be undone (its first part is
  upstream), nor can bytes be taken out of a compressed stream: BYE and close.

Either pump ending (EOF, error, timeout) cancels the nursery, and both connections are closed by
the caller, so no connection is ever left open on one side. One watchdog task keeps every timer
of the session (the idle timer, RFC 3501 5.4, on client input; during IDLE the separate
`idle_command` timer; the upstream's `upstream_response`) and is woken by the process-wide
drain; the client pump runs in the nursery's own task, so a session costs two spawned tasks.
With `relay.engine: epoll` a plain-TCP session runs in the engine instead (engine_imap.py).
"""

from __future__ import annotations

import zlib

import trio

from .. import logs
from ..imap import NEED_DATA, CommandParser, Limits, ProtocolError, ResponseParser, events
from ..metrics import command_label
from ..net.conn import Conn
from ..session.channel import Channel
from ..session.context import ByteCounter, CommandMeter, Session
from ..session.failures import Close, limit_of_protocol_error
from .engine import run_in_engine
from .engine_imap import ImapEngineSession
from .held_lines import HeldLines
from .imap_compress import CompressAsked, InflatedCopy
from .imap_inflight import InFlight
from .imap_upstream import UpstreamIMAP


class ImapRelay:
    def __init__(self, session: Session, client: Conn, client_leftover: bytes,
                 upstream: UpstreamIMAP):
        self.session = session
        self.upstream = upstream
        lim = session.listener.limits
        literal_plus = upstream.has(b"LITERAL+")
        self.client_parser = CommandParser(Limits(
            max_line=lim.max_line, max_literal=lim.max_literal, max_depth=lim.max_depth,
            max_nonsync_literal=lim.max_literal if literal_plus else lim.max_nonsync_literal,
            max_id_line=lim.id_line_length))   # RFC 2971 3.3
        self.client = Channel(client, self.client_parser, NEED_DATA, client_leftover)
        self.held = HeldLines(self.client_parser, client_leftover)
        self._said: list[bytes] = []   # the proxy's replies waiting for a response boundary
        self.bad = 0
        # The login's parser goes on (same limits, between two responses); it may hold the
        # start of what follows the login reply, which must be forwarded before it is parsed.
        self.upstream_parser = upstream.channel.parser
        self._upstream_leftover = self.upstream_parser.take_unconsumed()
        self.upstream_in = Channel(upstream.conn, self.upstream_parser, NEED_DATA,
                                   self._upstream_leftover)
        self.logout_seen = False
        self.draining = False
        self.inflight = InFlight(CommandMeter(session))
        metrics = session.runtime.metrics
        self._bytes_up = ByteCounter(metrics.bytes.labels("client_to_upstream", "imap"))
        self._bytes_down = ByteCounter(metrics.bytes.labels("upstream_to_client", "imap"))
        self.last_active = trio.current_time()
        self.upstream_heard = self.last_active   # last upstream bytes, or a command owed an answer
        self._sleep: trio.CancelScope | None = None   # the watchdog's sleep (a drain wakes it)
        self._compress: CompressAsked | None = None
        self._inflate_up: InflatedCopy | None = None     # client -> upstream, once compressed
        self._inflate_down: InflatedCopy | None = None   # upstream -> client, once compressed
        self._down_after_ok = b""   # compressed bytes behind the upstream's COMPRESS OK

    async def run(self) -> None:
        try:
            if await run_in_engine(self.session, self.client.conn, self.upstream.conn,
                                   lambda *io: ImapEngineSession(self, *io)):
                return   # (else: not for the engine, or handed back at COMPRESS)
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._upstream_to_client, nursery.cancel_scope)
                nursery.start_soon(self._watchdog)
                await self._client_to_upstream(nursery.cancel_scope)
        finally:  # also when cut at shutdown_timeout
            self._bytes_up.flush()
            self._bytes_down.flush()
            self.inflight.settle()

    # -- timers and drain (SIGTERM) -----------------------------------------------------------
    async def _watchdog(self) -> None:
        """Sleep until the nearest timer (or a drain) and act on it: RFC 3501 5.4 autologout
        after `idle` without client input (no command being answered), or an IDLE command
        running longer than `idle_command`; an upstream that stops answering a command for
        `upstream_response`; BYE at the first rest once draining. Timers are re-read after
        each wake-up, so activity pushes them back without touching this task."""
        timeouts = self.session.listener.timeouts
        drain = self.session.runtime.drain
        drain.subscribe(self._wake)
        try:
            while True:
                if drain.is_set() and not self.draining:
                    self.draining = True
                    await self._bye_if_at_rest()
                now = trio.current_time()
                idle_at = self.last_active + (
                    timeouts.idle_command if self.inflight.idle_tag else timeouts.idle)
                upstream_at = self.upstream_heard + timeouts.upstream_response
                if now >= idle_at:
                    await self._last_words(b"* BYE Autologout; idle for too long.\r\n")
                    self.session.end(Close.IDLE_TIMEOUT)
                    break
                if now >= upstream_at:
                    if self.inflight.owed():
                        self.session.runtime.metrics.limit_hits.labels("upstream_response").inc()
                        await self._last_words(b"* BYE Upstream server not responding.\r\n")
                        self.session.close_reason = Close.UPSTREAM_TIMEOUT
                        break
                    self.upstream_heard = now   # nothing owed: nothing to wait for
                    continue
                with trio.CancelScope(deadline=min(idle_at, upstream_at)) as self._sleep:
                    await trio.sleep_forever()
            self._cancel.cancel()
        finally:
            drain.unsubscribe(self._wake)

    def _wake(self) -> None:
        """The drain started: the watchdog looks at once."""
        if self._sleep is not None:
            self._sleep.cancel()

    async def _bye_if_at_rest(self) -> None:
        """While draining: BYE as soon as no command is in flight (an IDLE does not count) and
        the upstream's stream is between responses, so the BYE never splits one."""
        if not self.draining or self._cancel.cancel_called:
            return
        if self.inflight.owed() or not self.upstream_parser.at_boundary:
            return
        await self._last_words(b"* BYE Server shutting down.\r\n")
        self.session.close_reason = Close.SHUTDOWN
        self._cancel.cancel()

    async def _last_words(self, line: bytes) -> None:
        """An untagged line of the proxy's own before closing, only where it cannot land in
        the middle of a forwarded response (otherwise the connection just closes)."""
        if self.upstream_parser.at_boundary:
            await self._say(line)

    async def _say(self, line: bytes) -> None:
        """A line of the proxy's own to the client; under COMPRESS, a stored block of the
        upstream's DEFLATE stream where one may start (or nothing)."""
        inflated = self._inflate_down
        if inflated is None:
            await self.client.send(line)
        elif inflated.at_block_boundary:
            await self.client.send(inflated.own_block(line))

    # -- client -> upstream ------------------------------------------------------------------
    async def _client_to_upstream(self, cancel: trio.CancelScope) -> None:
        try:
            # commands pipelined behind the login first
            if self.held.held and not await self._client_input():
                return
            while True:
                if self._compress is not None and not await self._compress_answered():
                    return
                data = await self.client.receive()
                self.last_active = trio.current_time()
                if not data:
                    self.session.close_reason = Close.CLIENT_CLOSED
                    return
                if self._inflate_up is not None:
                    if not await self._client_inflated(data) or not await self._forward_up(data):
                        return
                    continue
                self.client.feed(data)
                self.held.add(data)
                if not await self._client_input():
                    return
                del data  # an idle session holds no chunk while it waits
        finally:
            cancel.cancel()

    async def _client_input(self) -> bool:
        """Judge the bytes received, then forward what was accepted; False ends the session.
        After a COMPRESS, what followed it stays held until the upstream's verdict."""
        if not await self._client_events():
            return False
        asked = self._compress
        data = self.held.accepted(None if asked is None else len(asked.after))
        return not data or await self._forward_up(data)

    async def _compress_answered(self) -> bool:
        """Wait for the upstream's verdict on COMPRESS, then parse what the client sent after
        the command accordingly (RFC 4978 3: compressed from the byte after the OK's CRLF)."""
        asked = self._compress
        assert asked is not None
        await asked.answered.wait()
        self._compress = None
        if asked.ok:
            self._inflate_up = InflatedCopy(self.session.listener.limits.inflate_chunk)
            after = self.held.accepted(0)   # = asked.after, compressed: forwarded as it is
            return await self._client_inflated(asked.after) and (
                not after or await self._forward_up(after))
        self.held.reread(len(asked.after))
        if asked.after:
            self.client.feed(asked.after)
            return await self._client_input()
        return True

    async def _client_inflated(self, data: bytes) -> bool:
        """Parse the inflated copy of a compressed chunk, a bounded slice at a time."""
        assert self._inflate_up is not None
        try:
            return await self._inflate_up.feed(data, self._client_plain)
        except zlib.error:
            self._bad_deflate("client_protocol_error")
            await self._last_words(b"* BYE Corrupt compressed data.\r\n")
            self.session.close_reason = Close.PROTOCOL_ERROR
            return False

    async def _client_plain(self, plain: bytes) -> bool:
        self.client.feed(plain)
        return await self._client_events()

    def _bad_deflate(self, event: str, **fields: object) -> None:
        self.session.runtime.metrics.protocol_errors.labels("imap", "bad_deflate").inc()
        logs.event(event, **self.session.log_fields(), **fields, kind="bad_deflate")

    async def _forward_up(self, data: bytes | bytearray) -> bool:
        self._bytes_up.add(len(data))
        if not await self.upstream.conn.send(data):
            self.session.close_reason = Close.UPSTREAM_CLOSED
            return False
        return True

    async def _client_events(self) -> bool:
        """Consume the parser's events for the data just received; False ends the session."""
        parser = self.client_parser
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                if not await self._reject(exc):
                    return False
                continue
            if self.held.dropping:
                self.held.after_event()
            if event is NEED_DATA:
                return True
            if type(event) is events.CommandStart:  # `type is`: exact classes, the fast test
                name = command_label("imap", event.name)
                self._started(event.tag, name)
                if name == "LOGOUT":
                    self.logout_seen = True
            elif type(event) is events.Command:
                if event.name == b"IDLE":
                    self.inflight.idle_tag = event.tag
                    parser.expect_line()
                elif event.name == b"COMPRESS" and self._inflate_up is None:
                    # what follows may be compressed: stop here (once active, the upstream
                    # refuses another: RFC 4978 3, COMPRESSIONACTIVE)
                    self._compress = CompressAsked(event.tag, parser.take_unconsumed())
                    return True
            elif type(event) is events.RawLine:
                self._raw_line(event.data)
            elif type(event) is events.ConnectionClosed:
                return True

    def _raw_line(self, line: bytes) -> None:
        command = self.inflight.raw_line(line)
        if command is not None:
            self._started(*command)

    def _started(self, tag: bytes, label: str) -> None:
        self.session.commands += 1
        if not self.inflight.owed():   # the upstream's time to answer starts now
            self.upstream_heard = trio.current_time()
        self.inflight.start(tag, label)

    async def _reject(self, exc: ProtocolError) -> bool:
        """A client line the parser refused. When none of its command went upstream: answer
        BAD, drop it and go on (False past `bad_commands`); otherwise BYE (False)."""
        self.session.runtime.metrics.protocol_errors.labels("imap", exc.kind).inc()
        limit = limit_of_protocol_error(exc.kind)
        if limit is not None:
            self.session.limit_hit(limit)
        logs.event("client_protocol_error", **self.session.log_fields(), kind=exc.kind)
        before = None if exc.fatal or self._inflate_up is not None else self.held.reject()
        if before is None:   # part of it is upstream already
            await self._last_words(exc.reply())
            if not exc.fatal:  # a fatal error's reply is already an untagged BYE
                await self._last_words(b"* BYE Protocol error, closing.\r\n")
            self.session.close_reason = Close.PROTOCOL_ERROR
            return False
        if before and not await self._forward_up(before):
            return False
        if exc.tag is not None and exc.kind != "line_too_long":
            self.inflight.pending.pop(exc.tag, None)   # a literal's limit: CommandStart was seen
        await self._reply_between(exc.reply())
        self.bad += 1
        if self.bad < self.session.listener.limits.bad_commands:
            return True
        await self._last_words(b"* BYE Too many invalid commands.\r\n")
        self.session.end(Close.BAD_COMMANDS)
        return False

    async def _reply_between(self, line: bytes) -> None:
        """A reply of the proxy's own: now if the upstream's stream is between responses,
        else queued for the downstream pump to write at the next boundary."""
        if not self._said and self.upstream_parser.at_boundary:
            await self._say(line)
        else:
            self._said.append(line)

    # -- upstream -> client ------------------------------------------------------------------
    async def _upstream_to_client(self, cancel: trio.CancelScope) -> None:
        parser = self.upstream_parser
        try:
            data, self._upstream_leftover = self._upstream_leftover, b""
            while True:  # forward first, then look: parsing never delays the bytes
                if not await self._forward_down(data):
                    self.session.close_reason = Close.CLIENT_CLOSED
                    return
                if not await self._upstream_look(parser, data):
                    await self._say(b"* BYE Upstream protocol error.\r\n")
                    self.session.close_reason = Close.UPSTREAM_PROTOCOL_ERROR
                    return
                if self._said and parser.at_boundary:
                    said, self._said = self._said, []
                    await self._say(b"".join(said))
                if self.draining:
                    await self._bye_if_at_rest()
                data = b""  # an idle session holds no chunk while it waits
                data = await self.upstream_in.receive()
                self.upstream_heard = now = trio.current_time()
                if self.inflight.pending and not self.inflight.idle_tag:  # answering is activity
                    self.last_active = now
                if not data:
                    self.session.close_reason = (Close.CLIENT_LOGOUT if self.logout_seen
                                                 else Close.UPSTREAM_CLOSED)
                    return
                if self._inflate_down is None:
                    self.upstream_in.feed(data)  # parsed once forwarded, at the top of the loop
        finally:
            cancel.cancel()

    async def _upstream_look(self, parser: ResponseParser, data: bytes) -> bool:
        """Parse what was just forwarded (fed already, or inflated here under COMPRESS)."""
        if self._inflate_down is None:
            if not self._upstream_events(parser):
                return False
            if self._inflate_down is None:
                return True
            data, self._down_after_ok = self._down_after_ok, b""  # COMPRESS OK came in it
        try:
            return await self._inflate_down.feed(data, self._upstream_plain)
        except zlib.error:
            self._bad_deflate("upstream_protocol_error", upstream=self.session.upstream)
            return False

    async def _upstream_plain(self, plain: bytes) -> bool:
        self.upstream_parser.receive_data(plain)
        return self._upstream_events(self.upstream_parser)

    async def _forward_down(self, data: bytes) -> bool:
        if not data:
            return True
        self._bytes_down.add(len(data))
        return await self.client.send(data)

    def _upstream_events(self, parser: ResponseParser) -> bool:
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                self.session.runtime.metrics.protocol_errors.labels("imap", exc.kind).inc()
                logs.event("upstream_protocol_error", **self.session.log_fields(),
                           upstream=self.session.upstream, kind=exc.kind)
                return False
            if event is NEED_DATA:
                return True
            if type(event) is events.TaggedResponse:
                self.inflight.complete(event.tag, event.status)
                asked = self._compress
                if asked is not None and event.tag == asked.tag and self._inflate_down is None:
                    asked.ok = event.status == b"OK"
                    asked.answered.set()
                    if asked.ok:  # the rest of the stream is compressed (RFC 4978 3)
                        self._inflate_down = InflatedCopy(self.session.listener.limits.inflate_chunk)
                        self._down_after_ok = parser.take_unconsumed()
                        return True
            elif type(event) is events.ConnectionClosed:
                return True
