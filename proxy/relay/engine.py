"""The relay engine: every logged-in plain-TCP relay session of the process in one epoll.

Theory of operation: with `relay.engine: epoll`, a relay session whose two connections are
plain TCP sockets is handed, once logged in, to the process's one Engine instead of running two
pump tasks and a watchdog. The engine owns both descriptors (non-blocking, registered once in
its own level-triggered epoll) and ONE trio task waits on the epoll's descriptor
(`wait_readable`); when it wakes, it reads every ready socket and runs that session's protocol
logic inline (engine_imap.py, engine_pop3.py: the same sans-IO parsers, held lines, commands in
flight and metrics as the task path). A relayed command thus costs no scheduler round of its
own, however many sessions there are: one wake-up serves every socket ready at that moment.

- Writes are tried at once. What the kernel does not take waits in that side's `out`, its
  descriptor asks for EPOLLOUT, and the other side is not read until `out` is empty
  (backpressure: at most one received chunk per direction is ever held). The client is not
  read either while its own output waits (the proxy's replies to it stay bounded).
- Timers (idle, idle_command, upstream_response) are one heap entry per session, at the time
  its nearest timer could fire. Activity only moves the session's timestamps; when an entry
  comes due the session looks at its timers again and asks for a new entry (a timer that
  moved earlier, e.g. a command now owed an answer, is pushed at once). Entries of ended
  sessions are skipped, and the heap is rebuilt when they outnumber the live ones.
- The connection's own task (serve.py) stays parked (`wait_task_rescheduled`, no timer, no
  frame beyond its await) until the session ends in the engine; it then flushes what the
  engine could not write (the last words) and closes both connections as before. Cancelling
  it (admin kick, shutdown_timeout) takes the session out of the engine.
- A session the engine cannot carry on (the client asks COMPRESS) is handed back: out of the
  epoll, its parsers and counters as they are, and the task path resumes from there.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import select
from typing import Callable

import trio

from .. import logs
from ..net.conn import Conn
from ..session.context import Session
from ..session.failures import Close

__all__ = ["Engine", "EngineSession", "Side", "run_in_engine"]

RECEIVE_SIZE = 256 * 1024   # one read per ready socket per wake-up
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR   # reported whatever the mask: read to learn which


class Side:
    """One connection of an engine session: its descriptor, its Conn (byte counts, EOF), and
    the bytes the kernel has not taken yet."""

    __slots__ = ("fd", "conn", "out", "mask", "session")

    def __init__(self, conn: Conn, fd: int, session: EngineSession):
        self.fd = fd
        self.conn = conn
        self.out: bytes | bytearray | memoryview = b""
        self.mask = _IN
        self.session = session


class EngineSession:
    """A relay session in the engine; the protocol's subclass gives `start`, `received`,
    `due`, `timer` and `drained`. `finish()` ends it, `hand_back()` returns it to tasks."""

    __slots__ = ("engine", "session", "client", "upstream", "done", "handed_back", "paused",
                 "timer_at", "task", "on_drain")

    def __init__(self, engine: Engine, session: Session, client: Conn, client_fd: int,
                 upstream: Conn, upstream_fd: int):
        self.engine = engine
        self.session = session
        self.client = Side(client, client_fd, self)
        self.upstream = Side(upstream, upstream_fd, self)
        self.done = False
        self.handed_back = False
        self.paused = False        # the protocol stops reading the client (POP3: answers in order)
        self.timer_at = math.inf   # when this session's live heap entry fires
        self.task: trio.lowlevel.Task | None = None
        self.on_drain: Callable[[], None] | None = None   # subscribed to the drain

    # -- what the protocol gives --------------------------------------------------------------
    def start(self) -> None:
        """Process what the login left unconsumed on either side."""

    def received(self, side: Side, data: bytes) -> None:
        """A chunk read from `side` (b"" at end of stream)."""
        raise NotImplementedError

    def due(self) -> float:
        """When the nearest timer could fire (trio clock)."""
        return math.inf

    def timer(self, now: float) -> None:
        """The entry for `due()` came up: act on whatever timer has expired."""

    def drained(self) -> None:
        """The process drains (SIGTERM)."""

    # -- what the engine gives ------------------------------------------------------------
    def send(self, side: Side, data: bytes | bytearray) -> bool:
        """Write `data` to `side` now, or keep the rest for when it is writable; False (and the
        Conn marked closed) when the peer is gone."""
        conn = side.conn
        if conn.closed:
            return False
        if side.out:   # (rare: the proxy's own line while a chunk waits)
            side.out = bytearray(side.out) + data
            return True
        try:
            sent = os.write(side.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            conn.closed = True
            return False
        conn.bytes_out += sent
        if sent < len(data):
            side.out = memoryview(data)[sent:]
        return True

    def finish(self) -> None:
        """The session ends (its close_reason set by the caller); its task takes over."""
        self.engine.release(self)

    def hand_back(self) -> None:
        """The task path carries on from the session's state as it is."""
        self.handed_back = True
        self.engine.release(self)


class Engine:
    """One per trio run (`engine()`); its task starts with the first session."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sides: dict[int, Side] = {}
        self._timers: list[tuple[float, int, EngineSession]] = []
        self._seq = itertools.count()
        self._dead = 0                   # heap entries of ended sessions, or superseded
        self._waiting: trio.CancelScope | None = None   # the loop's wait, until the next timer
        self._running = False
        self.now = trio.current_time()
        self.sessions = 0

    # -- sessions in and out ----------------------------------------------------------------
    async def relay(self, sess: EngineSession) -> bool:
        """Run `sess` in the engine until it ends (True) or is handed back (False)."""
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="relay-engine")
        for side in (sess.client, sess.upstream):
            self._epoll.register(side.fd, _IN)
            self._sides[side.fd] = side
        self.sessions += 1
        sess.session.runtime.metrics.relay_engine_sessions.inc()
        self.now = trio.current_time()
        self._guarded(sess, sess.start)
        if not sess.done:
            sess.on_drain = lambda: self._guarded(sess, sess.drained)
            sess.session.runtime.drain.subscribe(sess.on_drain)   # (calls it now if draining)
        if not sess.done:
            sess.task = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                sess.task = None   # cancelled (kick, shutdown_timeout): out of the engine
                self.release(sess)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return not sess.handed_back

    def release(self, sess: EngineSession) -> None:
        """Take `sess` out of the epoll and wake its task (once)."""
        if sess.done:
            return
        sess.done = True
        self.sessions -= 1
        sess.session.runtime.metrics.relay_engine_sessions.dec()
        if sess.on_drain is not None:
            sess.session.runtime.drain.unsubscribe(sess.on_drain)
        if sess.timer_at != math.inf:
            self._dead += 1
        for side in (sess.client, sess.upstream):
            self._sides.pop(side.fd, None)
            try:
                self._epoll.unregister(side.fd)
            except OSError:
                pass
        task, sess.task = sess.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _schedule(self, sess: EngineSession) -> None:
        """A heap entry at the session's nearest timer, if that is earlier than its entry."""
        at = sess.due()
        if at < sess.timer_at:
            if sess.timer_at != math.inf:
                self._dead += 1
            sess.timer_at = at
            heapq.heappush(self._timers, (at, next(self._seq), sess))
            waiting = self._waiting
            if waiting is not None and at < waiting.deadline:
                waiting.deadline = at

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        epoll, sides = self._epoll, self._sides
        fileno = epoll.fileno()
        while True:
            with trio.CancelScope(deadline=self._timers[0][0] if self._timers else math.inf
                                  ) as self._waiting:
                await trio.lowlevel.wait_readable(fileno)
            self._waiting = None
            self.now = trio.current_time()
            for fd, events in epoll.poll(0):
                side = sides.get(fd)
                if side is not None:
                    self._guarded(side.session, self._ready, side, events)
            self._fire_timers()

    def _ready(self, side: Side, events: int) -> None:
        sess = side.session
        if events & _OUT and side.out:
            self._flush(side)
        if sess.done:
            return
        if events & _IN or (events & _GONE and not side.mask & _OUT):
            try:
                data = os.read(side.fd, RECEIVE_SIZE)
            except BlockingIOError:
                return
            except OSError:   # reset: the same as an end of stream to the relay
                data = b""
            conn = side.conn
            conn.bytes_in += len(data)
            if not data:
                conn.eof = True
            sess.received(side, data)

    def _flush(self, side: Side) -> None:
        try:
            sent = os.write(side.fd, side.out)
        except BlockingIOError:
            return
        except OSError:
            side.conn.closed = True
            side.out = b""
            return
        side.conn.bytes_out += sent
        side.out = memoryview(side.out)[sent:] if sent < len(side.out) else b""

    def _guarded(self, sess: EngineSession, step: Callable[..., None], *args: object) -> None:
        """Run one step of a session; then fit its registrations and timer to its new state.
        A bug ends that session (logged, as serve.py does), never the engine."""
        try:
            step(*args)
            if not sess.done:
                self._interest(sess)
                self._schedule(sess)
        except Exception:
            sess.session.close_reason = Close.INTERNAL_ERROR
            logs.event("session_crash", logging.ERROR, exc_info=True, **sess.session.log_fields())
            self.release(sess)

    def _interest(self, sess: EngineSession) -> None:
        """Read a side only when nothing waits to go the other way (and the client only when
        its own output is out too); wait for EPOLLOUT on a side with bytes left."""
        client, upstream = sess.client, sess.upstream
        if client.conn.closed or upstream.conn.closed:   # a write failed: the session is over
            sess.session.close_reason = (Close.CLIENT_CLOSED if client.conn.closed
                                         else Close.UPSTREAM_CLOSED)
            self.release(sess)
            return
        self._modify(client, (_OUT if client.out else 0) | (
            0 if client.out or upstream.out or sess.paused else _IN))
        self._modify(upstream, (_OUT if upstream.out else 0) | (0 if client.out else _IN))

    def _modify(self, side: Side, mask: int) -> None:
        if side.mask != mask:
            side.mask = mask
            self._epoll.modify(side.fd, mask)

    def _fire_timers(self) -> None:
        timers, now = self._timers, self.now
        while timers and timers[0][0] <= now:
            at, _, sess = heapq.heappop(timers)
            if sess.done or at != sess.timer_at:
                self._dead -= 1
                continue
            sess.timer_at = math.inf
            self._guarded(sess, sess.timer, now)
        if self._dead > 64 and self._dead > len(timers) // 2:
            self._timers = [e for e in timers if not e[2].done and e[0] == e[2].timer_at]
            heapq.heapify(self._timers)
            self._dead = 0


_ENGINE: trio.lowlevel.RunVar[Engine] = trio.lowlevel.RunVar("relay_engine")


def engine() -> Engine:
    """The engine of this trio run (made on first use)."""
    try:
        return _ENGINE.get()
    except LookupError:
        made = Engine()
        _ENGINE.set(made)
        return made


def plain_fd(conn: Conn) -> int | None:
    """The descriptor of a plain TCP connection the engine can own; None otherwise (TLS, a
    stream with a PROXY-header prefix)."""
    stream = conn.stream
    if type(stream) is trio.SocketStream and not conn.closed:
        return stream.socket.fileno()
    return None


async def run_in_engine(session: Session, client: Conn, upstream: Conn,
                        make: Callable[[Engine, Conn, int, Conn, int], EngineSession]) -> bool:
    """True when the session ran to its end in the engine; False when the task path is to run
    it (engine off, not plain TCP, or handed back). What the engine could not write is sent
    here first, so the order of bytes is kept either way."""
    if session.runtime.config.relay.engine != "epoll":
        return False
    client_fd, upstream_fd = plain_fd(client), plain_fd(upstream)
    if client_fd is None or upstream_fd is None:
        return False
    sess = make(engine(), client, client_fd, upstream, upstream_fd)
    ended = await sess.engine.relay(sess)
    for side in (sess.client, sess.upstream):
        rest, side.out = bytes(side.out), b""
        if rest:
            await side.conn.send(rest)
    return ended
