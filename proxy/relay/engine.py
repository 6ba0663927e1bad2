"""The relay engine: every logged-in relay session of the process in one epoll.

Theory of operation: with `relay.engine: epoll`, a relay session whose two connections are
TCP sockets, plain or TLS, is handed, once logged in, to the process's one Engine instead of
running two pump tasks and a watchdog. The engine owns both descriptors (non-blocking, registered once in
its own level-triggered epoll) and a thread of its own blocks in `epoll.poll`; when it wakes it
reads every ready socket and runs that session's protocol logic inline (engine_imap.py,
engine_pop3.py: the same sans-IO relay cores as the task path). No trio scheduling is in a
relayed command's path at all, and one wake-up serves every socket ready at that moment.

- Threads: sessions, sides and the timer heap are touched only under `_lock`, by the engine's
  thread or by trio's (a session coming in, a cancelled one going out, the drain callback);
  trio's thread wakes the engine's through an eventfd when it moved the nearest timer earlier.
  A session's end reaches its task with `TrioToken.run_sync_soon`. Logs and Prometheus metrics
  are thread-safe; the clock is trio's (perf_counter plus its offset), so the task path can
  take over a session's timestamps.
- Writes are tried at once. What the kernel does not take waits in that side's `out`, its
  descriptor asks for EPOLLOUT, and the other side is not read until `out` is empty
  (backpressure: at most one received chunk per direction is ever held). The client is not
  read either while its own output waits (the proxy's replies to it stay bounded).
- Timers (idle, idle_command, upstream_response): one heap entry per session, at its nearest
  timer (engine_timers.py).
- The connection's own task (serve.py) stays parked (`wait_task_rescheduled`, no timer, no
  frame beyond its await) until the session ends in the engine; it then flushes what the
  engine could not write (the last words) and closes both connections as before. Cancelling
  it (admin kick, shutdown_timeout) takes the session out of the engine.
- TLS (implicit, after STARTTLS/STLS, upstream): the handshake and login ran on trio through
  net/conn.py's TLSStream; the engine takes over its sans-IO TLSEngine (net/tls_engine.py) with
  the socket. A readable TLS side's ciphertext is fed in and its plaintext handed to the
  protocol record batch by record batch while that side may be read; what the TLSEngine still
  holds when backpressure stops it waits there (one chunk at most, BIO_SLICE in OpenSSL) and is
  resumed (`_tls_waiting`) as soon as the other side has flushed, since epoll cannot report it.
  Sends are encrypted at once and written like plain ones (ciphertext in `out`). OpenSSL's own
  messages (tickets, KeyUpdate answers, the alert refusing a renegotiation) are written after
  each read; a TLS error or an EOF without close_notify reads as the end of that side, as on
  the task path. At the end the task's Conn.aclose sends our close_notify.
- The GIL: for the life of its trio run the process's switch interval is
  `relay.gil_switch_interval` (engine_gil.py).
- The run's end: the thread sees `_stopped`, leaves its loop and closes the epoll and the
  eventfd (under the lock, so trio's thread never writes to a closed or reused descriptor).
- A session the engine cannot carry on (the client asks COMPRESS) is handed back: out of the
  epoll, its parsers and counters as they are, and the task path resumes from there.
"""

from __future__ import annotations

import logging
import math
import os
import select
import ssl
import threading
import time
from typing import Callable

import trio

from .. import logs
from ..session.failures import Close
from .engine_gil import SwitchInterval
from .engine_session import IN, OUT, EngineSession, Side
from .engine_timers import TimerHeap

__all__ = ["Engine"]

RECEIVE_SIZE = 256 * 1024   # one read per ready socket per wake-up
_GONE = select.EPOLLHUP | select.EPOLLERR   # reported whatever the mask: read to learn which


class Engine:
    """One per trio run (`engine()`), started with its first session: a thread of its own
    blocking in epoll.wait, so no trio scheduling is in a relayed command's path at all."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sides: dict[int, Side] = {}
        self._timers = TimerHeap()
        self._tls_waiting: set[Side] = set()   # TLS sides whose engine may hold input
        # listening sockets the thread accepts on (engine_accept.py): fd -> (ready, stopped)
        self._listeners: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self._running = False
        self.gil = SwitchInterval()   # lowered from _start to the run's end
        self.thread: threading.Thread | None = None
        # Sessions, sides and timers are touched under this lock, by the engine's thread or by
        # trio's (a session in or out, the drain); trio's thread wakes the engine's via _wakefd.
        self._lock = threading.Lock()
        self._wakefd = -1
        self._wait_until = -math.inf     # the thread's poll deadline (-inf while it works)
        self._stopped = False
        self._offset = trio.current_time() - time.perf_counter()   # trio's clock, thread-side
        self.now = trio.current_time()
        self.sessions = 0

    def clock(self) -> float:
        """trio's clock (SystemClock: perf_counter plus an offset), readable from any thread."""
        return time.perf_counter() + self._offset

    # -- sessions in and out ----------------------------------------------------------------
    async def relay(self, sess: EngineSession) -> bool:
        """Run `sess` in the engine until it ends (True) or is handed back (False)."""
        if not self._running:
            self._start()
        with self._lock:
            if self._stopped:   # its thread died (relay_engine_crash): the task path relays
                return False
            for side in sess.sides:
                self._epoll.register(side.fd, IN)
                self._sides[side.fd] = side
            self.sessions += 1
            sess.session.runtime.metrics.relay_engine_sessions.inc()
            self.now = self.clock()
            self._guarded(sess, sess.start)
            for side in sess.sides:
                if side.tls is not None and not sess.done:   # (records read with the login's)
                    self._tls_waiting.add(side)
                    self._wake()
            drain = sess.session.runtime.drain
            draining = drain.is_set()
            # Parked iff the task is recorded here: from now on exactly one reschedule comes
            # (release(), from either thread, even before the task parks), or abort() takes
            # the task out. Testing `done` again outside the lock would race the engine's
            # thread: a reschedule queued for a task that went on (TrioInternalError).
            parked = not sess.done
            if parked:
                sess.task = trio.lowlevel.current_task()
                if not draining:   # (under the lock: release() unsubscribes under it too)
                    sess.on_drain = lambda: self._drained(sess)
                    drain.subscribe(sess.on_drain)
        if draining:
            self._drained(sess)
        if parked:

            def abort(_: object) -> trio.lowlevel.Abort:
                with self._lock:
                    now = sess
                    while now.successor is not None:   # (a login that became the relay)
                        now = now.successor
                    if now.done:   # ended by the engine's thread: its reschedule is on the way
                        return trio.lowlevel.Abort.FAILED
                    now.task = None   # cancelled (kick, shutdown_timeout): out of the engine
                    self.release(now)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return not sess.handed_back

    def _drained(self, sess: EngineSession) -> None:
        """The drain, from trio's thread, to the session carrying `sess`'s on."""
        with self._lock:
            while sess.successor is not None:
                sess = sess.successor
            if not sess.done:
                self.now = self.clock()
                self._guarded(sess, sess.drained)

    def release(self, sess: EngineSession) -> None:
        """Take `sess` out of the epoll and wake its task (once)."""
        if sess.done:
            return
        sess.done = True
        self.sessions -= 1
        sess.session.runtime.metrics.relay_engine_sessions.dec()
        if sess.on_drain is not None:
            sess.session.runtime.drain.unsubscribe(sess.on_drain)
        self._timers.forget(sess)
        for side in sess.sides:
            self._sides.pop(side.fd, None)
            try:
                self._epoll.unregister(side.fd)
            except (OSError, ValueError):   # (closed, or the epoll closed at the run's end)
                pass
            if side.tls is not None:   # its TLSStream sends the rest first: records stay whole
                side.tls.requeue(side.out)
                side.out = b""
        task, sess.task = sess.task, None
        if task is not None:
            try:
                self._token.run_sync_soon(trio.lowlevel.reschedule, task)
            except trio.RunFinishedError:   # (the process is ending)
                pass
        elif sess.ended is not None:   # (a session the engine accepted: no task to wake)
            sess.ended(sess)

    # -- sessions the thread accepts itself (engine_accept.py) ----------------------------------
    def listen(self, fd: int, ready: Callable[[], None], stopped: Callable[[], None]) -> bool:
        """Accept on listening socket `fd` in the thread: `ready()` when it is readable,
        `stopped()` if the thread dies. False when the engine cannot (its thread died). Trio's
        thread."""
        if not self._running:
            self._start()
        with self._lock:
            if self._stopped:
                return False
            self._epoll.register(fd, IN)
            self._listeners[fd] = (ready, stopped)
            return True

    def unlisten(self, fd: int) -> bool:
        """Stop accepting on `fd`; False if it was not listened on. Under the lock."""
        if self._listeners.pop(fd, None) is None:
            return False
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):   # (the epoll closed at the run's end)
            pass
        return True

    def adopt(self, sess: EngineSession) -> None:
        """Run `sess`, a connection the thread accepted, with no task: `sess.ended` is called
        at its release. Under the lock."""
        for side in sess.sides:
            self._epoll.register(side.fd, IN)
            self._sides[side.fd] = side
        self.sessions += 1
        sess.session.runtime.metrics.relay_engine_sessions.inc()
        self._guarded(sess, sess.start)

    def locked(self, act: Callable[..., None], *args: object) -> None:
        """`act(*args)` under the lock, the engine's clock read: from trio's thread."""
        with self._lock:
            self.now = self.clock()
            act(*args)

    @staticmethod
    def latest(sess: EngineSession) -> EngineSession:
        """The session carrying `sess`'s on (a login that became the relay)."""
        while sess.successor is not None:
            sess = sess.successor
        return sess

    def step(self, sess: EngineSession, step: Callable[..., None], *args: object) -> None:
        """One step of `sess` from outside the thread's loop (a drain). Under the lock."""
        if not sess.done:
            self._guarded(sess, step, *args)

    def attach(self, sess: EngineSession, side: Side, mask: int) -> None:
        """Add `sess`'s upstream side (its connect under way; engine_login.py). Engine thread."""
        sess.upstream, sess.sides = side, (sess.client, side)
        side.mask = mask
        self._epoll.register(side.fd, mask)
        self._sides[side.fd] = side

    def detach(self, side: Side) -> None:
        """Take an upstream side out before its session goes on without it. Engine thread."""
        sess = side.session
        sess.upstream, sess.sides = sess.client, (sess.client,)
        self._sides.pop(side.fd, None)
        self._epoll.unregister(side.fd)

    def succeed(self, old: EngineSession, new: EngineSession) -> None:
        """`new` carries on `old`'s session over the same descriptors (a login done in the
        engine becomes the relay): its task, drain subscription and registrations. Engine
        thread, in `old`'s step."""
        for mine, theirs in zip(new.sides, old.sides, strict=True):
            mine.mask = theirs.mask
            self._sides[mine.fd] = mine
            if theirs in self._tls_waiting:   # (its TLSEngine may hold what the client sent)
                self._tls_waiting.discard(theirs)
                self._tls_waiting.add(mine)
        new.task, old.task = old.task, None
        new.ended, old.ended = old.ended, None
        new.on_drain, old.on_drain = old.on_drain, None   # (it follows `successor`)
        old.successor = new
        self._timers.forget(old)
        old.done = True   # (no more steps: _guarded leaves it)
        self._guarded(new, new.start)

    def _schedule(self, sess: EngineSession) -> None:
        if self._timers.schedule(sess) and sess.timer_at < self._wait_until:
            self._wake()   # the thread sleeps past the new entry: it looks again

    def _wake(self) -> None:
        """Wake the engine's thread (under the lock: after `_stopped` the eventfd is closed)."""
        if not self._stopped:
            os.eventfd_write(self._wakefd, 1)

    # -- the loop ---------------------------------------------------------------------------
    def _start(self) -> None:
        self._running = True
        self._token = trio.lowlevel.current_trio_token()
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wakefd, IN)
        self.gil.lower()
        self.thread = threading.Thread(target=self._run_thread, name="relay-engine", daemon=True)
        self.thread.start()
        trio.lowlevel.spawn_system_task(self._stop_with_trio, name="relay-engine-stop")

    async def _stop_with_trio(self) -> None:
        """The thread ends with the trio run (system tasks are cancelled at its end)."""
        try:
            await trio.sleep_forever()
        finally:
            with self._lock:   # (the thread closes the eventfd once it sees _stopped)
                self._wake()
                self._stopped = True
            self.gil.restore()

    def _run_thread(self) -> None:
        try:
            self._loop()
        except BaseException:   # a bug: its sessions end, new ones stay on the task path
            logs.event("relay_engine_crash", logging.CRITICAL, exc_info=True)
            with self._lock:
                self._stopped = True
                for _, stopped in list(self._listeners.values()):   # trio's accept goes on
                    stopped()
                self._listeners.clear()
                for side in list(self._sides.values()):
                    side.session.session.close_reason = Close.INTERNAL_ERROR
                    self.release(side.session)
        with self._lock:   # stopped: nothing uses the descriptors any more
            os.close(self._wakefd)
            self._epoll.close()

    def _loop(self) -> None:
        # One wake-up's Python is on every relayed round trip's critical path: locals bound
        # once, the clock read once, timers and TLS looked at only when they have work.
        epoll, sides, lock, wakefd, timers = self._epoll, self._sides, self._lock, self._wakefd, \
            self._timers
        perf_counter, offset, ready_step = time.perf_counter, self._offset, self._ready
        while True:
            with lock:
                if self._stopped:
                    return
                self._wait_until = wait_until = timers.next_at()
                timeout = -1.0 if wait_until == math.inf else wait_until - perf_counter() - offset
                if timeout < 0.0 and wait_until != math.inf:   # (due already: no max() call)
                    timeout = 0.0
                if self._tls_waiting and any(side.mask & IN for side in self._tls_waiting):
                    timeout = 0.0
            ready = epoll.poll(timeout)
            with lock:
                self._wait_until = -math.inf
                self.now = now = perf_counter() + offset
                for fd, events in ready:
                    side = sides.get(fd)
                    if side is not None:
                        ready_step(side, events)
                    elif fd == wakefd:
                        try:
                            os.eventfd_read(wakefd)
                        except BlockingIOError:
                            pass
                    elif fd in self._listeners:
                        self._listeners[fd][0]()
                side = None   # (not kept alive while the thread waits: a reload frees its runtime)
                if timers.has_work(now):
                    self._fire_timers()
                if self._tls_waiting:
                    self._resume_tls()

    def _ready(self, side: Side, events: int) -> None:
        """`_guarded(sess, self._receive, side, events)`, spelt out: the relay's hot path."""
        sess = side.session
        try:
            if not self._receive(side, events) and not sess.done:   # (settled: nothing moved)
                self._interest(sess)
                if sess.due() < sess.timer_at:   # (activity only moves timers later, mostly)
                    self._schedule(sess)
        except Exception:
            self._crashed(sess)

    def _receive(self, side: Side, events: int) -> bool | None:
        sess = side.session
        if events & OUT:
            if side.out:
                self._flush(side)
            else:   # (asked for by a connect under way: engine_login.py)
                sess.writable(side)
        if sess.done:
            return None
        if events & IN or (events & _GONE and not side.mask & OUT):
            try:
                data = os.read(side.fd, RECEIVE_SIZE)
            except BlockingIOError:
                return None
            except OSError:   # reset: the same as an end of stream to the relay
                data = b""
            if side.tls is not None:
                side.tls.receive_data(data)
                self._decrypt(side, hung_up=not events & IN)
                return None
            conn = side.conn
            conn.bytes_in += len(data)
            if not data:
                conn.eof = True
            return sess.received(side, data)
        return None

    def _decrypt(self, side: Side, hung_up: bool = False) -> None:
        """Hand the plaintext `side`'s TLSEngine can give to its session, while that side may
        be read (else it waits in `_tls_waiting`); write what OpenSSL has to say. A side that
        hung up is read to its end whatever the backpressure, as a plain one is (its input is
        what the kernel held: bounded)."""
        tls, sess, conn = side.tls, side.session, side.conn
        assert tls is not None
        while True:
            if not side.mask & IN and not hung_up:   # resumed once the other side has flushed
                self._tls_waiting.add(side)
                return
            try:
                data = tls.read(RECEIVE_SIZE)
            except ssl.SSLError:   # broken: reset mid-record, a bad record, EOF without close_notify
                data = b""
            if tls.wants_send:
                side.write(tls.data_to_send())
            if data is None:   # a record is still incomplete: wait for the socket
                return
            conn.bytes_in += len(data)
            if not data:
                conn.eof = True
            sess.received(side, data)
            if not data or sess.done or not tls.has_unread:   # (the usual end: no read to fail)
                return
            self._interest(sess)
            if sess.done:
                return

    def _resume_tls(self) -> None:
        for side in list(self._tls_waiting):
            if side.session.done:
                self._tls_waiting.discard(side)
            elif side.mask & IN:
                self._tls_waiting.discard(side)
                self._guarded(side.session, self._decrypt, side)

    def _flush(self, side: Side) -> None:
        try:
            sent = os.write(side.fd, side.out)
        except BlockingIOError:
            return
        except OSError:
            side.conn.closed = True
            side.out = b""
            return
        if side.tls is None:
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
            self._crashed(sess)

    def _crashed(self, sess: EngineSession) -> None:
        sess.session.close_reason = Close.INTERNAL_ERROR
        logs.event("session_crash", logging.ERROR, exc_info=True, **sess.session.log_fields())
        self.release(sess)

    def _interest(self, sess: EngineSession) -> None:
        """Read a side only when nothing waits to go the other way (and the client only when
        its own output is out too); wait for EPOLLOUT on a side with bytes left."""
        client, upstream = sess.client, sess.upstream
        masks = sess.masks()   # (a session logging in says its own: engine_login.py)
        if masks is not None:
            if client.conn.closed:   # a write to the client failed
                sess.session.close_reason = Close.CLIENT_CLOSED
                self.release(sess)
                return
            for side, mask in zip(sess.sides, masks, strict=True):
                self._modify(side, mask)
            return
        if client.conn.closed or upstream.conn.closed:   # a write failed: the session is over
            sess.session.close_reason = (Close.CLIENT_CLOSED if client.conn.closed
                                         else Close.UPSTREAM_CLOSED)
            self.release(sess)
            return
        if client.out or upstream.out or sess.paused or client.mask != IN \
                or upstream.mask != IN:   # (else both are read, and nothing waits: no change)
            self._modify(client, (OUT if client.out else 0) | (
                0 if client.out or upstream.out or sess.paused else IN))
            self._modify(upstream, (OUT if upstream.out else 0) | (0 if client.out else IN))

    def _modify(self, side: Side, mask: int) -> None:
        if side.mask != mask:
            side.mask = mask
            self._epoll.modify(side.fd, mask)

    def _fire_timers(self) -> None:
        now = self.now
        for sess in self._timers.due(now):
            self._guarded(sess, sess.timer, now)
