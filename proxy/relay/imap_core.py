"""The IMAP relay's protocol logic after login, sans-IO: bytes in, what to send where out.

Theory of operation: one ImapRelayCore per relayed session holds everything the relay knows:
the command and response parsers in framing mode (line ends found with bytes.find, literal
payloads skipped by count), held lines, commands in flight, byte counters, the timestamps of
its timers and the proxy's own replies. Two drivers move bytes for it and do nothing else: the
task path (imap_relay.py, two trio pumps) and the engine (engine_imap.py, one epoll thread); a
session can move from one to the other at any chunk boundary because all state is here.

- `client_data(chunk, now)` feeds a client chunk and returns what to forward upstream: only
  what the parser accepted (held_lines.py). A command whose *first* line part is a syntax
  error never reaches the upstream: its tagged BAD (RFC 3501 7.1.3) is answered between the
  upstream's responses and the session goes on, as Dovecot does (`bad_commands` such answers
  end it); an error past a command's first part (already upstream) ends it with BYE. A chunk
  that is one plain command line at rest (the common case) is read by one regex, never fed
  to the parser (CommandParser.plain_line); the engine even forwards it before it is judged
  (`forward_first`, then `judge()`).
- `upstream_data(chunk, now)` is called once the driver has forwarded the chunk to the client
  (parsing never delays the bytes): tagged completions end commands in flight (metrics); a
  chunk that is one tagged status line is read by one regex (ResponseParser.tagged_line).
- `due()` / `timer(now)`: RFC 3501 5.4 autologout after `idle` without client input, an IDLE
  (RFC 2177) past `idle_command`, an upstream silent for `upstream_response` while a command
  is owed an answer. `drained()`: BYE at the first rest (no command owed, between responses).
- `answer_logout()`: a LOGOUT alone at rest is answered by the proxy (RFC 3501 6.1.3), the
  upstream's own answer left off the client's path (issue 16).

After each call the driver sends `take_replies()` (the proxy's own lines, b"" mostly) to the
client, and ends the session when `end` is set (its reason; session.close_reason is set too).
`compress` is set when the client asked COMPRESS (RFC 4978): the core then stops reading the
client's bytes until the driver has the upstream's verdict (imap_relay.py inflates copies).
The core never reads a clock: drivers pass `now` (trio's clock, also the engine's). How the
session ends by the proxy's own words (its lines, LOGOUT answered, timers, drain) is
imap_core_ends.py's CoreEnds, this class's base.
"""

from __future__ import annotations

from .. import logs
from ..imap import NEED_DATA, CommandParser, ProtocolError, ResponseParser, events
from ..metrics import IMAP_COMMANDS, OTHER
from ..session.context import ByteCounter, CommandMeter, Session
from ..session.failures import Close, limit_of_protocol_error
from .held_lines import HeldLines
from .imap_compress import CompressAsked
from .imap_core_ends import CoreEnds
from .imap_inflight import InFlight

__all__ = ["ImapRelayCore"]

# command_label("imap", name) of a name as the parser gives it (upper case): one dict hit
LABELS = {name.encode(): name for name in IMAP_COMMANDS}


class ImapRelayCore(CoreEnds):
    __slots__ = ("session", "client_parser", "upstream_parser", "held", "inflight",
                 "bytes_up", "bytes_down", "last_active", "logout_seen", "bad", "compress",
                 "compressed", "replies", "_said", "_before", "_down_after_ok", "_unjudged",
                 "_unjudged_size", "max_plain", "literal_owed")   # (and CoreEnds's)

    def __init__(self, session: Session, client_parser: CommandParser,
                 upstream_parser: ResponseParser, client_leftover: bytes, now: float):
        self.session = session
        self.client_parser = client_parser
        self.upstream_parser = upstream_parser
        if client_leftover:   # commands pipelined behind the login
            client_parser.receive_data(client_leftover)
        self.held = HeldLines(client_parser, client_leftover)
        self.inflight = InFlight(CommandMeter(session))
        metrics = session.runtime.metrics
        self.bytes_up = ByteCounter(metrics.child(metrics.bytes, "client_to_upstream", "imap"))
        self.bytes_down = ByteCounter(metrics.child(metrics.bytes, "upstream_to_client", "imap"))
        self.last_active = now
        self.upstream_heard = now   # last upstream bytes, or a command owed an answer
        self.logout_seen = False
        self.logout_tag: bytes | None = None   # a LOGOUT that came with nothing else in flight
        self.logged_out = False   # ... answered by the proxy (`answer_logout`)
        self.draining = False
        self.bad = 0
        self.compress: CompressAsked | None = None   # a COMPRESS awaiting its verdict
        self.compressed = False   # COMPRESS is active: parsers read inflated copies
        # what `upstream_parser.literal_left` was after the last chunk parsed in full (a
        # driver's cheap test before `literal_left()`: engine_splice.py); may be stale-high
        self.literal_owed = 0
        self.end: Close | None = None
        self.replies: list[bytes] = []   # the proxy's own lines, to the client now (take_replies)
        self._said: list[bytes] = []      # ... and those waiting for a response boundary
        self._before: list[bytes | bytearray] = []   # good bytes before a refused command
        self._down_after_ok = b""   # what followed the upstream's OK to COMPRESS: compressed
        self._unjudged: tuple[bytes, bytes] | None = None   # a plain line's (tag, name), forwarded
        self._unjudged_size = 0   # ... and its size, before it was judged and counted (`judge()`)
        limits = session.listener.limits   # (the client parser's: imap_relay.py)
        self.max_plain = min(limits.max_line, limits.id_line_length)

    def at_rest(self) -> bool:
        """Nothing of the core's own waits or is under way: no reply, end, COMPRESS, LOGOUT
        answer, drain, plain line unjudged, held or dropped client bytes, IDLE, nor an audit
        line per command; both parsers at rest (`passable`). While it holds (and only plain
        chunks that keep it come), a driver may relay a chunk that is one plain command line
        or one tagged status line and account for it itself, as `client_data` + `judge()`
        and `upstream_data` would have (relay/imap_fused.py)."""
        held, inflight = self.held, self.inflight
        return (self.end is None and not self.replies and not self._said and self.compress is None
                and not self.compressed and self.logout_tag is None and not self.draining
                and self._unjudged is None and not self._before and not held.held
                and not held.dropping and inflight.idle_tag is None and not inflight.meter.audit
                and self.client_parser.passable() and self.upstream_parser.passable())

    # -- what the driver reads after each call --------------------------------------------
    def take_replies(self) -> bytes:
        """The proxy's own lines to write to the client now (b"" mostly)."""
        if not self.replies:
            return b""
        replies, self.replies = self.replies, []
        return b"".join(replies)

    def settle(self) -> None:
        """The session ended: flush the byte counters, count what was never answered."""
        self.bytes_up.flush()
        self.bytes_down.flush()
        self.inflight.settle()

    # -- client -> upstream ---------------------------------------------------------------
    def client_data(self, data: bytes, now: float, forward_first: bool = False
                    ) -> bytes | bytearray:
        """A chunk from the client (b"" at its end of stream): what to forward upstream.
        While COMPRESS is active the chunk is returned whole (the driver parses its
        inflated copy with `client_plain`).

        `forward_first` (a driver that nothing can interleave with, the engine): a chunk that
        is one plain command line, arriving at rest, is returned before it is parsed, so the
        parse is off the command's round trip; the driver calls `judge()` once it is sent."""
        self.last_active = now
        if not data:
            self.finish(Close.CLIENT_CLOSED)
            return b""
        if self.compressed:
            self.bytes_up.add(len(data))
            return data
        parser, held = self.client_parser, self.held
        size = len(data)
        if (size <= self.max_plain and not held.held and self.inflight.idle_tag is None
                and self.compress is None and not held.dropping):
            head = parser.plain_line(data)
            if head is not None:   # forwarded as it came, never held; counted by `judge()`
                self._unjudged, self._unjudged_size = head, size
                if not forward_first:
                    self.judge()
                return data
        parser.receive_data(data)
        held.add(data)
        return self.client_input()

    def judge(self) -> None:
        """Judge the plain line `client_data` returned unjudged, now that it is forwarded:
        what `_client_events` does for its CommandStart and Command."""
        head = self._unjudged
        if head is None:
            return
        self._unjudged = None
        self.held.sent += self._unjudged_size   # (what `bytes_up.add` does, inline)
        counter = self.bytes_up
        counter.pending += self._unjudged_size
        if counter.pending >= counter.FLUSH_BYTES:
            counter.flush()
        tag, name = head
        self._started(tag, LABELS.get(name, OTHER))
        if name == b"LOGOUT":
            self._logout(tag)
        elif name == b"IDLE":
            self.inflight.idle_tag = tag
            self.client_parser.expect_line()
        elif name == b"COMPRESS":   # (never while compressed: client_data returned before)
            self.compress = CompressAsked(tag, b"")   # nothing was buffered after it

    def client_input(self) -> bytes | bytearray:
        """Judge what the parser holds, then return what it accepted, to forward; after a
        COMPRESS, what followed it stays held until the upstream's verdict."""
        data: bytes | bytearray = b""
        if self._client_events():
            asked = self.compress
            data = self.held.accepted(None if asked is None else len(asked.after))
        if self._before:   # good commands before a refused one (forwarded even if it ends)
            data = b"".join([*self._before, data])
            self._before.clear()
        if data:
            self.bytes_up.add(len(data))
        return data

    def client_plain(self, plain: bytes) -> bool:
        """An inflated slice of the client's compressed stream; False when the session ends."""
        self.client_parser.receive_data(plain)
        return self._client_events()

    def _client_events(self) -> bool:
        """Consume the parser's events for the data just received; False ends the session."""
        parser, held = self.client_parser, self.held
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                if not self._reject(exc):
                    return False
                continue
            if held.dropping:
                held.after_event()
            if event is NEED_DATA:
                return True
            if type(event) is events.CommandStart:   # `type is`: exact classes, the fast test
                name = LABELS.get(event.name, OTHER)
                self._started(event.tag, name)
                if name == "LOGOUT":
                    self._logout(event.tag)
            elif type(event) is events.Command:
                if event.name == b"IDLE":
                    self.inflight.idle_tag = event.tag
                    parser.expect_line()
                elif event.name == b"COMPRESS" and not self.compressed:
                    # what follows may be compressed: stop here (once active, the upstream
                    # refuses another: RFC 4978 3, COMPRESSIONACTIVE)
                    self.compress = CompressAsked(event.tag, parser.take_unconsumed())
                    return True
            elif type(event) is events.RawLine:
                command = self.inflight.raw_line(event.data)
                if command is not None:
                    self._started(*command)
            elif type(event) is events.ConnectionClosed:
                return True

    def _logout(self, tag: bytes) -> None:
        self.logout_seen = True
        if len(self.inflight.pending) == 1:   # (itself): the driver may `answer_logout()`
            self.logout_tag = tag

    def _started(self, tag: bytes, label: str) -> None:
        self.session.commands += 1
        if self.inflight.start(tag, label):   # the upstream's time to answer starts now
            self.upstream_heard = self.last_active

    def _reject(self, exc: ProtocolError) -> bool:
        """A client line the parser refused. When none of its command went upstream: answer
        BAD, drop it and go on (False past `bad_commands`); otherwise BYE (False)."""
        session = self.session
        session.runtime.metrics.protocol_errors.labels("imap", exc.kind).inc()
        limit = limit_of_protocol_error(exc.kind)
        if limit is not None:
            session.limit_hit(limit)
        logs.event("client_protocol_error", **session.log_fields(), kind=exc.kind)
        before = None if exc.fatal or self.compressed else self.held.reject()
        if before is None:   # part of it is upstream already
            self.last_words(exc.reply())
            if not exc.fatal:  # a fatal error's reply is already an untagged BYE
                self.last_words(b"* BYE Protocol error, closing.\r\n")
            self.finish(Close.PROTOCOL_ERROR)
            return False
        if before:
            self._before.append(before)
        if exc.tag is not None and exc.kind != "line_too_long":
            self.inflight.pending.pop(exc.tag, None)   # a literal's limit: CommandStart was seen
        self._reply_between(exc.reply())
        self.bad += 1
        if self.bad < session.listener.limits.bad_commands:
            return True
        self.last_words(b"* BYE Too many invalid commands.\r\n")
        self.finish(Close.BAD_COMMANDS)
        return False

    # -- upstream -> client ---------------------------------------------------------------
    def upstream_data(self, data: bytes, now: float) -> bytes:
        """A chunk from the upstream, already forwarded to the client (b"" at its end).
        Returns what the driver must inflate and parse (`upstream_plain`, then
        `upstream_parsed`) once COMPRESS is active: the chunk, or what followed the OK."""
        self.upstream_heard = now
        inflight = self.inflight
        if inflight.pending and not inflight.idle_tag:   # answering is activity
            self.last_active = now
        if not data:
            self.finish(Close.CLIENT_LOGOUT if self.logout_seen else Close.UPSTREAM_CLOSED)
            return b""
        counter = self.bytes_down   # (what `bytes_down.add` does, inline)
        counter.pending += len(data)
        if counter.pending >= counter.FLUSH_BYTES:
            counter.flush()
        if self.compressed:
            return data
        if self.compress is None:
            head = self.upstream_parser.tagged_line(data)
            if head is not None:
                inflight.complete(head[0], head[1])
                if self._said or self.draining:
                    self.upstream_parsed()
                return b""
        self.upstream_parser.receive_data(data)
        if not self.upstream_plain(b""):
            return b""
        self.literal_owed = self.upstream_parser.literal_left   # (not on the tagged-line path)
        if self.compressed:   # the OK to COMPRESS came in this chunk
            rest, self._down_after_ok = self._down_after_ok, b""
            if rest:
                return rest
        self.upstream_parsed()
        return b""

    def literal_left(self) -> int:
        """Payload bytes of the upstream's literal in flight that no chunk has brought yet, when
        a driver may move them to the client unread (`upstream_passed`): 0 while COMPRESS is
        asked or active, once the session ends, or when any upstream input is buffered."""
        if self.compressed or self.compress is not None or self.end is not None:
            return 0
        return self.upstream_parser.literal_left

    def upstream_passed(self, size: int, now: float) -> None:
        """`size` bytes of that payload went from the upstream to the client without being
        read (engine_splice.py): timed, counted and framed as `upstream_data` would have."""
        self.upstream_heard = now
        inflight = self.inflight
        if inflight.pending and not inflight.idle_tag:   # answering is activity
            self.last_active = now
        self.bytes_down.add(size)
        self.upstream_parser.pass_literal(size)

    def upstream_plain(self, plain: bytes) -> bool:
        """Parse `plain` (b"": what was fed already); False, with BYE, on a protocol error."""
        parser = self.upstream_parser
        if plain:
            parser.receive_data(plain)
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                self.session.runtime.metrics.protocol_errors.labels("imap", exc.kind).inc()
                logs.event("upstream_protocol_error", **self.session.log_fields(),
                           upstream=self.session.upstream, kind=exc.kind)
                self.replies.append(b"* BYE Upstream protocol error.\r\n")
                self.finish(Close.UPSTREAM_PROTOCOL_ERROR)
                return False
            if event is NEED_DATA:
                return True
            if type(event) is events.TaggedResponse:
                self.inflight.complete(event.tag, event.status)
                asked = self.compress
                if asked is not None and event.tag == asked.tag and not self.compressed:
                    asked.ok = event.status == b"OK"
                    asked.answered.set()
                    if asked.ok:  # the rest of the stream is compressed (RFC 4978 3)
                        self.compressed = True
                        self._down_after_ok = parser.take_unconsumed()
                        return True
            elif type(event) is events.ConnectionClosed:
                return True

    def upstream_parsed(self) -> None:
        """After a chunk's events: the proxy's queued replies at a boundary, the drain's BYE."""
        if self._said and self.upstream_parser.at_boundary:
            self.replies += self._said
            self._said = []
        if self.draining:
            self._bye_if_at_rest()

