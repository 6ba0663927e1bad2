"""An IMAP relay session in the engine (engine.py): the task path's logic, run inline.

Theory of operation: the session keeps everything on its ImapRelay (imap_relay.py): the same
command and response parsers in framing mode, held lines, commands in flight, byte counters,
timestamps and the proxy's queued replies, so the two paths behave alike and a session can move
from the engine to tasks at any chunk boundary. Only what awaited there is written again here
without awaiting: a chunk from the client is fed, judged, and what the parser accepted goes
upstream (a refused first line part answered BAD between responses, RFC 3501 7.1.3); a chunk
from the upstream goes to the client first and is parsed after (tagged completions, literals
by count). The watchdog's timers become `due()` / `timer()`; the drain's BYE waits for rest.

A client's COMPRESS (RFC 4978) is forwarded like any command, then the session is handed back
to tasks before the upstream's verdict is read: the task path waits for it, and inflates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import logs
from ..imap import NEED_DATA, ProtocolError, events
from ..metrics import command_label
from ..net.conn import Conn
from ..session.failures import Close, limit_of_protocol_error
from .engine import Engine
from .engine_session import EngineSession, Side
from .imap_compress import CompressAsked

if TYPE_CHECKING:
    from .imap_relay import ImapRelay

__all__ = ["ImapEngineSession"]


class ImapEngineSession(EngineSession):
    __slots__ = ("relay",)

    def __init__(self, relay: ImapRelay, engine: Engine, client: Conn, client_fd: int,
                 upstream: Conn, upstream_fd: int):
        super().__init__(engine, relay.session, client, client_fd, upstream, upstream_fd)
        self.relay = relay

    def start(self) -> None:
        relay = self.relay
        leftover, relay._upstream_leftover = relay._upstream_leftover, b""
        if leftover and not self._down(leftover):
            return
        if relay.held.held:   # commands pipelined behind the login
            self._client_input()

    def received(self, side: Side, data: bytes) -> None:
        relay, now = self.relay, self.engine.now
        if side is self.client:
            relay.last_active = now
            if not data:
                self._end(Close.CLIENT_CLOSED)
                return
            relay.client.feed(data)
            relay.held.add(data)
            self._client_input()
            return
        relay.upstream_heard = now
        if relay.inflight.pending and not relay.inflight.idle_tag:  # answering is activity
            relay.last_active = now
        if not data:
            self._end(Close.CLIENT_LOGOUT if relay.logout_seen else Close.UPSTREAM_CLOSED)
            return
        self._down(data)

    # -- timers and drain -------------------------------------------------------------------
    def due(self) -> float:
        relay = self.relay
        timeouts = self.session.listener.timeouts
        idle_at = relay.last_active + (
            timeouts.idle_command if relay.inflight.idle_tag else timeouts.idle)
        return min(idle_at, relay.upstream_heard + timeouts.upstream_response)

    def timer(self, now: float) -> None:
        """As the task path's watchdog: RFC 3501 5.4 autologout, an IDLE past `idle_command`,
        an upstream silent for `upstream_response` while a command is owed an answer."""
        relay = self.relay
        timeouts = self.session.listener.timeouts
        idle_at = relay.last_active + (
            timeouts.idle_command if relay.inflight.idle_tag else timeouts.idle)
        if now >= idle_at:
            self._last_words(b"* BYE Autologout; idle for too long.\r\n")
            self.session.end(Close.IDLE_TIMEOUT)
            self.finish()
        elif now >= relay.upstream_heard + timeouts.upstream_response:
            if relay.inflight.owed():
                self.session.runtime.metrics.limit_hits.labels("upstream_response").inc()
                self._last_words(b"* BYE Upstream server not responding.\r\n")
                self._end(Close.UPSTREAM_TIMEOUT)
            else:
                relay.upstream_heard = now   # nothing owed: nothing to wait for

    def drained(self) -> None:
        self.relay.draining = True
        self._bye_if_at_rest()

    def _bye_if_at_rest(self) -> None:
        relay = self.relay
        if self.done or relay.inflight.owed() or not relay.upstream_parser.at_boundary:
            return
        self._say(b"* BYE Server shutting down.\r\n")
        self._end(Close.SHUTDOWN)

    def _last_words(self, line: bytes) -> None:
        if self.relay.upstream_parser.at_boundary:
            self._say(line)

    def _say(self, line: bytes) -> None:
        self.send(self.client, line)

    # -- client -> upstream -----------------------------------------------------------------
    def _client_input(self) -> None:
        relay = self.relay
        if not self._client_events():
            self.finish()
            return
        asked = relay._compress
        data = relay.held.accepted(None if asked is None else len(asked.after))
        if data and not self._up(data):
            return
        if asked is not None:
            self.hand_back()

    def _up(self, data: bytes | bytearray) -> bool:
        self.relay._bytes_up.add(len(data))
        if not self.send(self.upstream, data):
            self._end(Close.UPSTREAM_CLOSED)
            return False
        return True

    def _client_events(self) -> bool:
        """As ImapRelay._client_events; False ends the session (its reason set)."""
        relay = self.relay
        parser = relay.client_parser
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                if not self._reject(exc):
                    return False
                continue
            if relay.held.dropping:
                relay.held.after_event()
            if event is NEED_DATA:
                return True
            if type(event) is events.CommandStart:
                name = command_label("imap", event.name)
                self._started(event.tag, name)
                if name == "LOGOUT":
                    relay.logout_seen = True
            elif type(event) is events.Command:
                if event.name == b"IDLE":
                    relay.inflight.idle_tag = event.tag
                    parser.expect_line()
                elif event.name == b"COMPRESS":   # the task path takes it from here
                    relay._compress = CompressAsked(event.tag, parser.take_unconsumed())
                    return True
            elif type(event) is events.RawLine:
                command = relay.inflight.raw_line(event.data)
                if command is not None:
                    self._started(*command)
            elif type(event) is events.ConnectionClosed:
                return True

    def _started(self, tag: bytes, label: str) -> None:
        relay = self.relay
        self.session.commands += 1
        if not relay.inflight.owed():   # the upstream's time to answer starts now
            relay.upstream_heard = self.engine.now
        relay.inflight.start(tag, label)

    def _reject(self, exc: ProtocolError) -> bool:
        """As ImapRelay._reject: BAD and go on when none of the command went upstream."""
        relay, session = self.relay, self.session
        session.runtime.metrics.protocol_errors.labels("imap", exc.kind).inc()
        limit = limit_of_protocol_error(exc.kind)
        if limit is not None:
            session.limit_hit(limit)
        logs.event("client_protocol_error", **session.log_fields(), kind=exc.kind)
        before = None if exc.fatal else relay.held.reject()
        if before is None:   # part of it is upstream already
            self._last_words(exc.reply())
            if not exc.fatal:   # a fatal error's reply is already an untagged BYE
                self._last_words(b"* BYE Protocol error, closing.\r\n")
            session.close_reason = Close.PROTOCOL_ERROR
            return False
        if before and not self._up(before):
            return False
        if exc.tag is not None and exc.kind != "line_too_long":
            relay.inflight.pending.pop(exc.tag, None)   # a literal's limit: CommandStart was seen
        line = exc.reply()
        if not relay._said and relay.upstream_parser.at_boundary:
            self._say(line)
        else:
            relay._said.append(line)
        relay.bad += 1
        if relay.bad < session.listener.limits.bad_commands:
            return True
        self._last_words(b"* BYE Too many invalid commands.\r\n")
        session.end(Close.BAD_COMMANDS)
        return False

    # -- upstream -> client -----------------------------------------------------------------
    def _down(self, data: bytes) -> bool:
        """Forward first, then parse; False when the session ended."""
        relay = self.relay
        relay._bytes_down.add(len(data))
        if not self.send(self.client, data):
            self._end(Close.CLIENT_CLOSED)
            return False
        parser = relay.upstream_parser
        parser.receive_data(data)
        if not relay._upstream_events(parser):
            self._say(b"* BYE Upstream protocol error.\r\n")
            self._end(Close.UPSTREAM_PROTOCOL_ERROR)
            return False
        if relay._said and parser.at_boundary:
            said, relay._said = relay._said, []
            self._say(b"".join(said))
        if relay.draining:
            self._bye_if_at_rest()
        return not self.done
