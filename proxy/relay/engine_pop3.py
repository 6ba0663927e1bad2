"""A POP3 relay session in the engine (engine.py): the task path's logic, run inline.

Theory of operation: the state stays on the Pop3Relay (pop3_relay.py): parsers, the queue of
commands awaiting answers, meters, timestamps. Client commands of one chunk go upstream in one
write; the upstream's chunks go to the client first and are parsed after, matching status
lines and body ends to the queue. A command the proxy answers itself (CAPA, the authorization
commands, a refused line) is answered only once every earlier command has been (RFC 2449 6.6
pipelining keeps order): until then the session stops reading the client (`paused`) and the
rest of what the client sent waits in the parser, taken up again after the answer. RFC 1939 3
autologout closes without a word; a drain closes once nothing is owed an answer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import logs
from ..metrics import command_label
from ..net.conn import Conn
from ..pop3 import NEED_DATA, ProtocolError, events, is_multiline, writer
from ..session.failures import Close, limit_of_protocol_error
from .engine import Engine
from .engine_session import EngineSession, Side

if TYPE_CHECKING:
    from .pop3_relay import Pop3Relay

__all__ = ["Pop3EngineSession"]

_LOCAL = {b"CAPA", b"STLS", b"USER", b"PASS", b"APOP", b"AUTH", b"XCLIENT"}


class Pop3EngineSession(EngineSession):
    __slots__ = ("relay", "status", "waiting")

    def __init__(self, relay: Pop3Relay, engine: Engine, client: Conn, client_fd: int,
                 upstream: Conn, upstream_fd: int):
        super().__init__(engine, relay.session, client, client_fd, upstream, upstream_fd)
        self.relay = relay
        self.status = b"+OK"   # of the upstream's response in progress, across chunks
        self.waiting: tuple[bytes, bool] | None = None   # a local reply (and whether it ends)

    def start(self) -> None:
        self._commands()   # what was pipelined behind the login

    def received(self, side: Side, data: bytes) -> None:
        relay = self.relay
        if side is self.client:
            relay.last_active = self.engine.now
            if not data:
                self._end(Close.CLIENT_CLOSED)
                return
            relay.client_parser.receive_data(data)
            self._commands()
            return
        if relay.pending:   # answering a command is activity
            relay.last_active = self.engine.now
        if not data:
            self._end(Close.CLIENT_LOGOUT if relay.quit_seen else Close.UPSTREAM_CLOSED)
            return
        self._down(data)

    # -- timers and drain -------------------------------------------------------------------
    def due(self) -> float:
        return self.relay.last_active + self.session.listener.timeouts.idle

    def timer(self, now: float) -> None:
        # RFC 1939 3: closed "without removing any messages or sending any response"
        if now >= self.due():
            self.session.end(Close.IDLE_TIMEOUT)
            self.finish()

    def drained(self) -> None:
        self.relay.draining = True
        self._close_if_at_rest()

    def _close_if_at_rest(self) -> None:
        if self.relay.draining and not self.relay.pending and not self.done:
            self._end(Close.SHUTDOWN)

    # -- client -> upstream -----------------------------------------------------------------
    def _commands(self) -> None:
        """Forward every complete command buffered, in one write per run of them; a local
        answer waits until nothing sent before it is owed one (iterative: a chunk may hold
        many)."""
        relay = self.relay
        while True:
            batch = self._batch()
            if batch:
                relay._bytes_up.add(len(batch))
                if not self.send(self.upstream, batch):
                    self._end(Close.UPSTREAM_CLOSED)
                    return
            self.paused = self.waiting is not None
            if self.waiting is None or relay.pending:
                return
            reply, fatal = self.waiting
            self.waiting = None
            self.send(self.client, reply)
            if fatal:
                self._end(Close.PROTOCOL_ERROR)
                return

    def _batch(self) -> bytearray:
        """The commands to forward up to the next local answer (then `waiting`) or NEED_DATA."""
        relay = self.relay
        batch = bytearray()
        while self.waiting is None:
            try:
                event = relay.client_parser.next_event()
            except ProtocolError as exc:
                relay.session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
                limit = limit_of_protocol_error(exc.kind)
                if limit is not None:
                    relay.session.limit_hit(limit)
                self.waiting = (exc.reply(), exc.fatal)
                break
            if event is NEED_DATA or isinstance(event, events.ConnectionClosed):
                break
            if not isinstance(event, events.Command):
                continue
            relay.session.commands += 1
            if event.name in _LOCAL:
                self.waiting = (relay._local_answer(event), False)
                break
            multiline = is_multiline(event.name, event.args)
            relay.upstream_parser.expect(multiline)
            relay.pending.append((command_label("pop3", event.name), time.monotonic(), multiline))
            if event.name == b"QUIT":
                relay.quit_seen = True
            batch += event.raw + b"\r\n"
        return batch

    # -- upstream -> client -----------------------------------------------------------------
    def _down(self, data: bytes) -> None:
        relay = self.relay
        relay._bytes_down.add(len(data))
        if not self.send(self.client, data):   # forward first: parsing never delays it
            self._end(Close.CLIENT_CLOSED)
            return
        relay.upstream_parser.receive_data(data)
        try:
            self.status = relay._upstream_events(relay.upstream_parser, self.status)
        except ProtocolError as exc:
            relay.session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
            logs.event("upstream_protocol_error", **relay.session.log_fields(),
                       upstream=relay.session.upstream, kind=exc.kind)
            self.send(self.client, writer.err(b"Upstream protocol error.", b"SYS/TEMP"))
            self._end(Close.UPSTREAM_PROTOCOL_ERROR)
            return
        if self.waiting is not None and not relay.pending:
            self._commands()   # the local answer it waited for, and what followed it
        if not self.done:
            self._close_if_at_rest()
