"""The POP3 relay's protocol logic after login, sans-IO: bytes in, what to send where out.

Theory of operation: client commands are single lines, so `client_data()` returns every
complete command buffered (`raw` + CRLF, a run of them in one write) and queues, in order, the
framing its answer will have (ResponseParser.expect(is_multiline(...))) and its name and start
time for metrics. The upstream's chunks are forwarded by the driver as received and then given
to `upstream_data()`, whose parser only finds status lines and the `CRLF.CRLF` that ends a
multi-line body with bytes.find across chunk boundaries: a RETR body passes without per-line
Python work. The common chunks skip even the parsers' events: a client chunk that is one plain
transaction command (CommandParser.plain_line) and an upstream chunk that is one whole answer,
status line and body through its terminator (ResponseParser.whole_answer).

A few commands are answered by the proxy: CAPA (the upstream's post-login list, filtered) and
the authorization commands, which are wrong after login (RFC 1939 4), and a refused line. To
keep pipelined answers in order (RFC 2449 6.6) such an answer waits (`waiting`) until every
earlier command has been answered: until then the driver stops reading the client, the rest of
what it sent waits in the parser, and `commands()` takes it up again once `pending` is empty.

After each call the driver writes `take_replies()` to the client and ends the session when
`end` is set. Two drivers: the task path (pop3_relay.py) and the engine (engine_pop3.py).
RFC 1939 3 autologout closes without a word; a drain closes once nothing is owed an answer.
"""

from __future__ import annotations

import time
from collections import deque

from .. import logs
from ..metrics import POP3_COMMANDS, command_label
from ..pop3 import (
    MULTILINE_ALWAYS,
    MULTILINE_WITHOUT_ARGS,
    NEED_DATA,
    CommandParser,
    ProtocolError,
    ResponseParser,
    events,
    writer,
)
from ..session.context import ByteCounter, CommandMeter, Session
from ..session.failures import Close, limit_of_protocol_error

__all__ = ["Pop3RelayCore"]

_LOCAL = {b"CAPA", b"STLS", b"USER", b"PASS", b"APOP", b"AUTH", b"XCLIENT"}
# command_label("pop3", name) of a name as the parser gives it (upper case): one dict hit
_LABELS = {name.encode(): name for name in POP3_COMMANDS}


class Pop3RelayCore:
    __slots__ = ("session", "client_parser", "upstream_parser", "capabilities", "pending",
                 "meter", "bytes_up", "bytes_down", "last_active", "quit_seen", "draining",
                 "waiting", "status", "end", "_replies", "_unjudged")

    def __init__(self, session: Session, client_parser: CommandParser,
                 capabilities: list[bytes], now: float):
        self.session = session
        self.client_parser = client_parser
        # Nothing follows the login's last reply (CAPA) until the next command is sent.
        self.upstream_parser = ResponseParser(greeting=False, keep_bodies=False)
        self.capabilities = capabilities   # what CAPA answers (relayable, post-login)
        self.pending: deque[tuple[str, float, bool]] = deque()  # name, start, multi-line
        self.meter = CommandMeter(session)
        metrics = session.runtime.metrics
        self.bytes_up = ByteCounter(metrics.child(metrics.bytes, "client_to_upstream", "pop3"))
        self.bytes_down = ByteCounter(metrics.child(metrics.bytes, "upstream_to_client", "pop3"))
        self.last_active = now
        self.quit_seen = False
        self.draining = False
        self.waiting: tuple[bytes, bool] | None = None   # a local reply (and whether it ends)
        self.status = b"+OK"   # of the upstream's response in progress, across chunks
        self.end: Close | None = None
        self._replies: list[bytes] = []
        # a plain command's (name, args), forwarded before it was judged (`judge()`)
        self._unjudged: tuple[bytes, tuple[bytes, ...]] | None = None

    # -- what the driver reads after each call --------------------------------------------
    def take_replies(self) -> bytes:
        """The proxy's own answers to write to the client now (b"" mostly)."""
        if not self._replies:
            return b""
        replies, self._replies = self._replies, []
        return b"".join(replies)

    def finish(self, reason: Close) -> None:
        if self.end is None:
            self.end = reason
            self.session.end(reason)

    def settle(self) -> None:
        """The session ended: flush the byte counters, count what was never answered."""
        self.bytes_up.flush()
        self.bytes_down.flush()
        for name, _, _ in self.pending:
            self.session.runtime.metrics.commands.labels("pop3", name, "none").inc()

    # -- client -> upstream ---------------------------------------------------------------
    def client_data(self, data: bytes, now: float, forward_first: bool = False
                    ) -> bytes | bytearray:
        """A chunk from the client (b"" at its end of stream): what to forward upstream.

        `forward_first` (a driver that nothing can interleave with, the engine): a chunk that
        is one plain transaction command, arriving at rest, is returned before it is parsed,
        so the parse is off the command's round trip; the driver calls `judge()` once it is
        sent (and before it reads the upstream's answer)."""
        self.last_active = now
        if not data:
            self.finish(Close.CLIENT_CLOSED)
            return b""
        if self.plain_command(data, now):
            if not forward_first:
                self.judge()
            return data
        self.client_parser.receive_data(data)
        return self.commands()

    def plain_command(self, data: bytes, now: float) -> bool:
        """The engine's tight path: when `data` is one plain transaction command arriving at
        rest (CommandParser.plain_line), take it (never buffered: judged from the regex's
        reading) and return True: the driver writes `data` upstream as it is, then calls
        `judge()`; nothing else is owed. Else False and nothing taken (`client_data` it)."""
        if self.waiting is not None:
            return False
        head = self.client_parser.plain_line(data)   # (None past the parser's line limit)
        if head is None:
            return False
        self.last_active = now
        self._unjudged = head
        counter = self.bytes_up   # (ByteCounter.add, spelt out: the hot path)
        counter.pending += len(data)
        if counter.pending >= counter.FLUSH_BYTES:
            counter.flush()
        return True

    def judge(self) -> None:
        """Judge the plain command `client_data` returned unjudged (what `_batch` does for
        its Command), now that it is forwarded."""
        head = self._unjudged
        if head is None:
            return
        self._unjudged = None
        self.session.commands += 1
        self._sent_upstream(*head)

    def _sent_upstream(self, name: bytes, args: tuple[bytes, ...]) -> None:
        """A command goes upstream (`name` upper case, as the parsers give it): its answer's
        framing and its metrics wait for it."""
        # pop3.is_multiline, spelt out (the name is upper case already)
        multiline = name in MULTILINE_ALWAYS or (not args and name in MULTILINE_WITHOUT_ARGS)
        self.upstream_parser.expect(multiline)
        self.pending.append((_LABELS.get(name) or command_label("pop3", name), time.monotonic(),
                             multiline))
        if name == b"QUIT":
            self.quit_seen = True

    def commands(self) -> bytes | bytearray:
        """Every complete command buffered up to a local answer that must wait, to forward in
        one write; a local answer whose turn has come goes to the replies (iterative: a chunk
        may hold many)."""
        while True:
            batch = self._batch()
            if batch or self.waiting is None or self.pending:
                if batch:
                    self.bytes_up.add(len(batch))
                return batch
            reply, fatal = self.waiting
            self.waiting = None
            self._replies.append(reply)
            if fatal:
                self.finish(Close.PROTOCOL_ERROR)
                return b""

    def _batch(self) -> bytes | bytearray:
        """The commands to forward up to the next local answer (then `waiting`) or NEED_DATA."""
        parser, session = self.client_parser, self.session
        batch: bytes | bytearray = b""
        while self.waiting is None:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
                limit = limit_of_protocol_error(exc.kind)
                if limit is not None:
                    session.limit_hit(limit)
                self.waiting = (exc.reply(), exc.fatal)
                break
            if type(event) is not events.Command:
                if event is NEED_DATA or type(event) is events.ConnectionClosed:
                    break
                continue
            session.commands += 1
            name = event.name
            if name in _LOCAL:
                self.waiting = (self._local_answer(event), False)
                break
            self._sent_upstream(name, event.args)
            line = event.raw + b"\r\n"
            batch = line if not batch else bytearray(batch) + line
        return batch

    def _local_answer(self, cmd: events.Command) -> bytes:
        name = command_label("pop3", cmd.name)
        if cmd.name == b"CAPA":
            caps = b"".join(c + b"\r\n" for c in self.capabilities)
            self.meter.completed(name, b"+OK", time.monotonic())
            return writer.ok(b"Capability list follows") + writer.multiline(caps)
        self.meter.completed(name, b"-ERR", time.monotonic())
        return writer.err(b"Already authenticated.")

    # -- upstream -> client ---------------------------------------------------------------
    def upstream_data(self, data: bytes, now: float) -> bytes | bytearray:
        """A chunk from the upstream, already forwarded to the client (b"" at its end).
        Returns what to forward upstream: the commands a local answer held back, once every
        earlier command has been answered (the driver resumes reading the client then)."""
        if self.answer_chunk(data, now):
            return b""
        if self.pending:   # answering a command is activity
            self.last_active = now
        if not data:
            self.finish(Close.CLIENT_LOGOUT if self.quit_seen else Close.UPSTREAM_CLOSED)
            return b""
        self.bytes_down.add(len(data))
        parser = self.upstream_parser
        ok = parser.whole_answer(data)
        try:
            if ok is not None:   # the whole answer to the oldest command, read at once
                self.status = b"+OK" if ok else b"-ERR"
                self._answered()
            else:
                parser.receive_data(data)
                self._upstream_events(parser)
        except ProtocolError as exc:
            session = self.session
            session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
            logs.event("upstream_protocol_error", **session.log_fields(),
                       upstream=session.upstream, kind=exc.kind)
            self._replies.append(writer.err(b"Upstream protocol error.", b"SYS/TEMP"))
            self.finish(Close.UPSTREAM_PROTOCOL_ERROR)
            return b""
        up: bytes | bytearray = b""
        if self.waiting is not None and not self.pending:
            up = self.commands()   # the local answer it waited for, and what followed it
        if self.draining:
            self._close_if_at_rest()
        return up

    def answer_chunk(self, data: bytes, now: float) -> bool:
        """The tight path of `upstream_data`: a chunk (already forwarded) that is the whole
        answer to the oldest command (ResponseParser.whole_answer), or more of a body in flight
        whose terminator is at its very end or nowhere in it (ResponseParser.body_chunk), when
        nothing waits and no drain is on: taken (the counters added, the command counted once,
        when its answer ends) and True, the driver owes nothing. Else False, nothing taken."""
        if not data or self.waiting is not None or self.draining or not self.pending:
            return False
        parser = self.upstream_parser
        ok = parser.whole_answer(data)
        status: bytes | None
        if ok is not None:
            self.status = status = b"+OK" if ok else b"-ERR"
        else:
            ended = parser.body_chunk(data)
            if ended is None:
                return False
            status = self.status if ended else None   # (its status: the +OK that began it)
        if status is not None:   # (`_answered`, spelt out: pending is not empty here)
            name, started, _ = self.pending.popleft()
            self.meter.completed(name, status, started)
        self.last_active = now
        counter = self.bytes_down   # (ByteCounter.add, spelt out)
        counter.pending += len(data)
        if counter.pending >= counter.FLUSH_BYTES:
            counter.flush()
        return True

    def _upstream_events(self, parser: ResponseParser) -> None:
        """Match status lines (and body ends) to pending commands; the status of the response
        in progress is carried across chunks."""
        while True:
            event = parser.next_event()
            if type(event) is events.StatusLine:  # `type is`: exact classes, the fast test
                ok = event.ok
                self.status = b"+OK" if ok else b"-ERR"
                if not ok or not (self.pending and self.pending[0][2]):
                    self._answered()
            elif type(event) is events.MultilineEnd:
                self._answered()
            elif event is NEED_DATA or type(event) is events.ConnectionClosed:
                return

    def _answered(self) -> None:
        if self.pending:
            name, started, _ = self.pending.popleft()
            self.meter.completed(name, self.status, started)

    # -- timers and drain -----------------------------------------------------------------
    def due(self) -> float:
        return self.last_active + self.session.listener.timeouts.idle

    def timer(self, now: float) -> None:
        # RFC 1939 3: closed "without removing any messages or sending any response to the
        # client" (a pipelining client would misread one)
        if now >= self.due():
            self.finish(Close.IDLE_TIMEOUT)

    def drained(self) -> None:
        self.draining = True
        self._close_if_at_rest()

    def _close_if_at_rest(self) -> None:
        if self.draining and not self.pending:
            self.finish(Close.SHUTDOWN)
