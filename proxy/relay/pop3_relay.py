"""The POP3 relay after login: multi-line aware, pipelining aware, streaming.

Theory of operation: client commands are single lines, so the client pump forwards each parsed
command (`raw` + CRLF; all commands of one read in one write) and queues, in order, the framing
its answer will have (ResponseParser.expect(is_multiline(...))) and its name and start time for
metrics. The upstream pump forwards every chunk as received; its parser only finds status lines
and the `CRLF.CRLF` that ends a multi-line body with bytes.find across chunk boundaries, so a
RETR body passes without per-line Python work.

A few commands are answered by the proxy, in order: CAPA (the upstream's post-login list,
filtered) and the authorization commands, which are wrong after login (RFC 1939 4). To keep
pipelined answers in order the pump first waits until every earlier command has been answered.
With `relay.engine: epoll` a plain-TCP session runs in the engine instead (engine_pop3.py).
"""

from __future__ import annotations

import time
from collections import deque

import trio

from .. import logs
from ..metrics import command_label
from ..net.conn import Conn
from ..pop3 import (
    NEED_DATA,
    CommandParser,
    Limits,
    ProtocolError,
    ResponseParser,
    events,
    is_multiline,
    writer,
)
from ..session.channel import Channel
from ..session.context import ByteCounter, CommandMeter, Session
from ..session.failures import Close, limit_of_protocol_error
from .engine import run_in_engine
from .engine_pop3 import Pop3EngineSession
from .pop3_upstream import UpstreamPOP3, relayable

_LOCAL = {b"CAPA", b"STLS", b"USER", b"PASS", b"APOP", b"AUTH", b"XCLIENT"}


class Pop3Relay:
    def __init__(self, session: Session, client: Conn, client_leftover: bytes,
                 upstream: UpstreamPOP3):
        self.session = session
        self.upstream = upstream
        lim = session.listener.limits
        self.client_parser = CommandParser(Limits(max_command_line=lim.pop3_max_command_line))
        self.client = Channel(client, self.client_parser, NEED_DATA, client_leftover)
        # Nothing follows the login's last reply (CAPA) until the next command is sent.
        self.upstream_parser = ResponseParser(greeting=False, keep_bodies=False)
        self.upstream_in = Channel(upstream.conn, self.upstream_parser, NEED_DATA)
        self.pending: deque[tuple[str, float, bool]] = deque()  # name, start, multi-line
        self.answered = trio.Event()
        self.quit_seen = False
        self.draining = False
        metrics = session.runtime.metrics
        self._bytes_up = ByteCounter(metrics.bytes.labels("client_to_upstream", "pop3"))
        self._bytes_down = ByteCounter(metrics.bytes.labels("upstream_to_client", "pop3"))
        self.last_active = trio.current_time()
        self.meter = CommandMeter(session)

    async def run(self) -> None:
        drain = self.session.runtime.drain
        try:
            if await run_in_engine(self.session, self.client.conn, self.upstream.conn,
                                   lambda *io: Pop3EngineSession(self, *io)):
                return
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._upstream_to_client, nursery.cancel_scope)
                nursery.start_soon(self._watch_idle)
                drain.subscribe(self._drained)   # the process-wide drain calls back: no task
                await self._client_to_upstream(nursery.cancel_scope)
        finally:  # also when cut at shutdown_timeout
            drain.unsubscribe(self._drained)
            self._bytes_up.flush()
            self._bytes_down.flush()
            for name, _, _ in self.pending:
                self.session.runtime.metrics.commands.labels("pop3", name, "none").inc()

    # -- drain (SIGTERM): close after the current command ------------------------------------
    def _drained(self) -> None:
        self.draining = True
        self._close_if_at_rest()

    def _close_if_at_rest(self) -> None:
        if self.draining and not self.pending:
            self.session.close_reason = Close.SHUTDOWN
            self._cancel.cancel()

    # -- client -> upstream ------------------------------------------------------------------
    async def _client_to_upstream(self, cancel: trio.CancelScope) -> None:
        try:
            while True:
                if not await self._client_commands():
                    return
                data = await self.client.receive()
                self.last_active = trio.current_time()
                if not data:
                    self.session.close_reason = Close.CLIENT_CLOSED
                    return
                self.client.feed(data)
        finally:
            cancel.cancel()

    async def _watch_idle(self) -> None:
        """RFC 1939 3 autologout: no client input (and no command being answered) for `idle`.
        The deadline is re-read after each wake-up, so activity pushes it back."""
        idle = self.session.listener.timeouts.idle
        while True:
            deadline = self.last_active + idle
            if deadline <= trio.current_time():
                break
            await trio.sleep_until(deadline)
        # RFC 1939 3: on the autologout timer the server closes "without removing any messages
        # or sending any response to the client" (a pipelining client would misread one).
        self.session.end(Close.IDLE_TIMEOUT)
        self._cancel.cancel()

    async def _client_commands(self) -> bool:
        """Forward every complete command buffered; False ends the session."""
        batch = bytearray()
        while True:
            try:
                event = self.client_parser.next_event()
            except ProtocolError as exc:
                self.session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
                limit = limit_of_protocol_error(exc.kind)
                if limit is not None:
                    self.session.limit_hit(limit)
                if not await self._flush(batch):
                    return False
                await self._local_reply(exc.reply())
                if exc.fatal:
                    self.session.close_reason = Close.PROTOCOL_ERROR
                    return False
                continue
            if event is NEED_DATA or isinstance(event, events.ConnectionClosed):
                return await self._flush(batch)
            if not isinstance(event, events.Command):
                continue
            self.session.commands += 1
            if event.name in _LOCAL:
                if not await self._flush(batch):
                    return False
                await self._local_reply(self._local_answer(event))
                continue
            multiline = is_multiline(event.name, event.args)
            self.upstream_parser.expect(multiline)
            self.pending.append((command_label("pop3", event.name), time.monotonic(), multiline))
            if event.name == b"QUIT":
                self.quit_seen = True
            batch += event.raw + b"\r\n"

    async def _flush(self, batch: bytearray) -> bool:
        if not batch:
            return True
        data = bytes(batch)
        batch.clear()
        self._bytes_up.add(len(data))
        if not await self.upstream.conn.send(data):
            self.session.close_reason = Close.UPSTREAM_CLOSED
            return False
        return True

    def _local_answer(self, cmd: events.Command) -> bytes:
        name = command_label("pop3", cmd.name)
        if cmd.name == b"CAPA":
            caps = b"".join(c + b"\r\n" for c in relayable(self.upstream.capabilities))
            self.meter.completed(name, b"+OK", time.monotonic())
            return writer.ok(b"Capability list follows") + writer.multiline(caps)
        self.meter.completed(name, b"-ERR", time.monotonic())
        return writer.err(b"Already authenticated.")

    async def _local_reply(self, reply: bytes) -> None:
        """Answer in order: after every command sent upstream has been answered."""
        while self.pending:
            self.answered = trio.Event()
            await self.answered.wait()
        await self.client.send(reply)

    # -- upstream -> client ------------------------------------------------------------------
    async def _upstream_to_client(self, cancel: trio.CancelScope) -> None:
        parser = self.upstream_parser
        status = b"+OK"
        try:
            while True:
                data = await self.upstream_in.receive()
                if self.pending:  # answering a command is activity
                    self.last_active = trio.current_time()
                if not data:
                    self.session.close_reason = Close.CLIENT_LOGOUT if self.quit_seen \
                        else Close.UPSTREAM_CLOSED
                    return
                self._bytes_down.add(len(data))
                if not await self.client.send(data):  # forward first: parsing never delays it
                    self.session.close_reason = Close.CLIENT_CLOSED
                    return
                self.upstream_in.feed(data)
                try:
                    status = self._upstream_events(parser, status)
                except ProtocolError as exc:
                    self.session.runtime.metrics.protocol_errors.labels("pop3", exc.kind).inc()
                    logs.event("upstream_protocol_error", **self.session.log_fields(),
                               upstream=self.session.upstream, kind=exc.kind)
                    await self.client.send(writer.err(b"Upstream protocol error.", b"SYS/TEMP"))
                    self.session.close_reason = Close.UPSTREAM_PROTOCOL_ERROR
                    return
                self._close_if_at_rest()
        finally:
            cancel.cancel()

    def _upstream_events(self, parser: ResponseParser, status: bytes) -> bytes:
        """Match status lines (and body ends) to pending commands; returns the status of the
        response in progress, carried across chunks."""
        while True:
            event = parser.next_event()
            if event is NEED_DATA or type(event) is events.ConnectionClosed:
                return status
            if type(event) is events.StatusLine:  # `type is`: exact classes, the fast test
                status = b"+OK" if event.ok else b"-ERR"
                if not event.ok or not (self.pending and self.pending[0][2]):
                    self._finish(status)
            elif type(event) is events.MultilineEnd:
                self._finish(status)

    def _finish(self, status: bytes) -> None:
        if self.pending:
            name, started, _ = self.pending.popleft()
            self.meter.completed(name, status, started)
        if not self.pending:
            self.answered.set()
