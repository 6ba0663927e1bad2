"""The relay engine's thread and its loop (engine.py holds the theory of operation): the epoll,
the eventfd that wakes it, the reads and writes of ready sides (plain and TLS), a session's step
with its registrations and timer fitted after it, and a session's release. `Engine` (engine.py)
adds how sessions come in and go on: from a task, accepted by the thread, or a login becoming the
relay."""

from __future__ import annotations

import logging
import math
import os
import select
import ssl
import threading
import time
from collections import deque
from typing import Callable

import trio

from .. import logs
from ..session.failures import Close
from .engine_gil import SwitchInterval
from .engine_session import IN, OUT, RECEIVE_SIZE, EngineSession, Side
from .engine_splice import PipePool
from .engine_timers import TimerHeap

__all__ = ["EngineLoop", "RECEIVE_SIZE"]

_GONE = select.EPOLLHUP | select.EPOLLERR   # reported whatever the mask: read to learn which


class EngineLoop:
    """The thread, its epoll and a session's steps; under `_lock` (see engine.py)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sides: dict[int, Side] = {}
        self._timers = TimerHeap()
        self._tls_waiting: set[Side] = set()   # TLS sides whose engine may hold input
        # steps other threads hand the engine's (Engine.post): run when the eventfd wakes it
        self._posted: deque[tuple[EngineSession, Callable[..., None], tuple[object, ...]]] = \
            deque()
        # descriptors registered since the thread's poll began: that poll's events for their
        # number were a closed descriptor's (the number reused), not theirs (`_loop`)
        self._fresh: set[int] = set()
        # listening sockets the thread accepts on (engine_accept.py): fd -> (ready, stopped)
        self._listeners: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self._running = False
        self.pipes = PipePool()   # empty pipes for literals spliced (engine_splice.py)
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

    def release(self, sess: EngineSession) -> None:
        """Take `sess` out of the epoll and wake its task (once)."""
        if sess.done:
            return
        sess.done = True
        if sess.fused is not None:
            sess.unfuse()
        self.sessions -= 1
        sess.session.runtime.metrics.relay_engine_sessions.dec()
        if sess.on_drain is not None:
            sess.session.runtime.drain.unsubscribe(sess.on_drain)
        self._timers.forget(sess)
        sess.released()
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

    def _schedule(self, sess: EngineSession) -> None:
        if self._timers.schedule(sess) and sess.timer_at < self._wait_until:
            self._wake()   # the thread sleeps past the new entry: it looks again

    def _wake(self) -> None:
        """Wake the engine's thread (under the lock: after `_stopped` the eventfd is closed)."""
        if not self._stopped:
            os.eventfd_write(self._wakefd, 1)


    def _register(self, side: Side, mask: int) -> None:
        """Put `side` in the epoll and the table (under the lock, either thread)."""
        self._epoll.register(side.fd, mask)
        self._sides[side.fd] = side
        self._fresh.add(side.fd)

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
            self.pipes.close()

    def _loop(self) -> None:
        # One wake-up's Python is on every relayed round trip's critical path: locals bound
        # once; the lock held but for the poll (one release and one acquire per wake-up); the
        # clock read once, after the poll (the next poll's timeout is counted from it: a timer
        # fires at most one wake-up's work late); timers and TLS looked at only when they have
        # work; a plain side that is only readable read here and handed to its session.
        epoll, sides, lock, wakefd, timers = self._epoll, self._sides, self._lock, self._wakefd, \
            self._timers
        perf_counter, offset, ready_step = time.perf_counter, self._offset, self._ready
        fresh, read, interest, inf = self._fresh, os.read, self._interest, math.inf
        now = perf_counter() + offset
        sess: EngineSession | None = None
        with lock:
            while not self._stopped:
                if fresh:   # (empty but after a registration: no call)
                    fresh.clear()
                self._wait_until = wait_until = timers.at
                if wait_until == inf:
                    timeout = -1.0
                else:   # (due already: 0, with no max() call)
                    timeout = wait_until - now if wait_until > now else 0.0
                if self._tls_waiting and any(side.mask & IN for side in self._tls_waiting):
                    timeout = 0.0
                lock.release()
                try:
                    ready = epoll.poll(timeout)
                finally:
                    lock.acquire()
                self._wait_until = -inf
                self.now = now = perf_counter() + offset
                for fd, events in ready:
                    if fresh and fd in fresh:   # registered since the poll: these events were
                        continue   # a closed descriptor's (level-triggered: its own come again)
                    side = sides.get(fd)
                    if side is None:
                        if fd == wakefd:
                            try:
                                os.eventfd_read(wakefd)
                            except BlockingIOError:
                                pass
                            if self._posted:
                                self._run_posted()
                        elif fd in self._listeners:
                            self._listeners[fd][0]()
                    elif events != IN or side.tls is not None or side.spliced:
                        ready_step(side, events)
                    else:   # the relay's common wake-up: `_ready` of a plain side, spelt out
                        sess = side.session
                        try:
                            try:
                                data = read(fd, side.read_size)
                            except BlockingIOError:
                                continue
                            except OSError:   # reset: the same as an end of stream to the relay
                                data = b""
                            fused = sess.fused   # (at rest: one step for a plain chunk)
                            if fused is not None and fused(side, data):
                                continue
                            conn = side.conn
                            conn.bytes_in += len(data)
                            if not data:
                                conn.eof = True
                            if not sess.received(side, data) and not sess.done:
                                interest(sess)   # (not settled: fit its masks and timer)
                                if sess.due() < sess.timer_at:
                                    self._schedule(sess)
                        except Exception:
                            self._crashed(sess)
                side = sess = None   # (not kept alive while the thread waits: a reload frees
                # its runtime)
                if timers.at <= now:
                    self._fire_timers()
                if self._tls_waiting:
                    self._resume_tls()

    def _run_posted(self) -> None:
        """The steps other threads posted (Engine.post), in order; a session ended since is
        left alone."""
        posted = self._posted
        while posted:
            sess, step, args = posted.popleft()
            if not sess.done:
                self._guarded(sess, step, *args)

    def _ready(self, side: Side, events: int) -> None:
        """`_guarded(sess, self._receive, side, events)`, spelt out: a side with more than
        plain input to read (output to flush, a hang-up, TLS); `_loop` reads the rest."""
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
        if side.spliced:   # (a literal moved by the kernel: engine_splice.py)
            sess.splice_ready(side, events)
            return None
        if events & OUT:
            if side.out:
                self._flush(side)
            else:   # (asked for by a connect under way: engine_login.py)
                sess.writable(side)
        if sess.done:
            return None
        if events & IN or (events & _GONE and not side.mask & OUT):
            try:
                data = os.read(side.fd, side.read_size)
            except BlockingIOError:
                return None
            except OSError:   # reset: the same as an end of stream to the relay
                data = b""
            if side.tls is not None:
                side.tls.receive_data(data)
                # settled (as `received` says it): `_ready` need not fit the session again,
                # unless the flush above changed what it waits for
                return self._decrypt(side, hung_up=not events & IN) and not events & OUT
            conn = side.conn
            conn.bytes_in += len(data)
            if not data:
                conn.eof = True
            return sess.received(side, data)
        return None

    def _decrypt(self, side: Side, hung_up: bool = False) -> bool:
        """Hand the plaintext `side`'s TLSEngine can give to its session, while that side may
        be read (else it waits in `_tls_waiting`); write what OpenSSL has to say. A side that
        hung up is read to its end whatever the backpressure, as a plain one is (its input is
        what the kernel held: bounded). True when the session is settled since it was last
        fitted (`EngineSession.received`'s meaning: the fused step took the chunk, or the full
        path said so, and OpenSSL's own bytes went out whole): the caller need not fit it
        (issue 16: the common TLS wake-up, a chunk the fused step takes, skips `_interest`
        and `due()`, as a plain side's does in `_loop`)."""
        tls, sess, conn = side.tls, side.session, side.conn
        assert tls is not None
        settled = True
        while True:
            if not side.mask & IN and not hung_up:   # resumed once the other side has flushed
                self._tls_waiting.add(side)
                return False
            try:
                data = tls.read(RECEIVE_SIZE)
            except ssl.SSLError:   # broken: reset mid-record, a bad record, EOF without close_notify
                data = b""
            if tls.wants_send:
                side.write(tls.data_to_send())
            if data is None:   # a record is still incomplete: wait for the socket
                return settled and not side.out
            fused = sess.fused   # (at rest: one step for a plain chunk, as in `_loop`)
            if fused is None or not fused(side, data):
                conn.bytes_in += len(data)
                if not data:
                    conn.eof = True
                if not sess.received(side, data):
                    settled = False
            if not data or sess.done or not tls.has_unread:   # (the usual end: no read to fail)
                return settled and not side.out
            self._interest(sess)
            if sess.done:
                return False
            settled = True   # (fitted just now)

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

    def _guarded(self, sess: EngineSession, step: Callable[..., object], *args: object) -> None:
        """Run one step of a session; then fit its registrations and timer to its new state.
        A bug ends that session (logged, as serve.py does), never the engine."""
        if sess.fused is not None:   # (the step may change what being at rest rests on)
            sess.unfuse()
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
