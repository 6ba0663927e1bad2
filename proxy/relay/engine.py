"""The relay engine: every logged-in relay session of the process in one epoll.

Theory of operation: with `relay.engine: epoll`, a relay session whose two connections are
TCP sockets, plain or TLS, is handed, once logged in, to the process's one Engine instead of
running two pump tasks and a watchdog. The engine owns both descriptors (non-blocking, registered once in
its own level-triggered epoll) and a thread of its own blocks in `epoll.poll`; when it wakes it
reads every ready socket and runs that session's protocol logic inline (engine_imap.py,
engine_pop3.py: the same sans-IO relay cores as the task path). No trio scheduling is in a
relayed command's path at all, and one wake-up serves every socket ready at that moment.
The thread, its loop and the reads and writes are in engine_loop.py; how sessions come in
(from a task, accepted by the thread) and go on (a login becoming the relay) is here.

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
- A descriptor number is reused as soon as it is closed, often within one wake-up (a session
  ends, the next one accepts or connects): a poll's events for a number registered since that
  poll began were the closed descriptor's and are skipped (`_fresh`); the epoll is
  level-triggered, so the new descriptor's own events come at the next poll. (Handed to the
  new side they read a connecting upstream's greeting as the connect's end, and lost it.)
- Timers (idle, idle_command, upstream_response): one heap entry per session, at its nearest
  timer (engine_timers.py).
- The connection's own task (serve.py) stays parked (`wait_task_rescheduled`, no timer, no
  frame beyond its await) until the session ends in the engine; it then flushes what the
  engine could not write (the last words) and closes both connections as before. Cancelling
  it (admin kick, shutdown_timeout) takes the session out of the engine.
- Steps from other threads (`post`): a TLS handshake step done on a handshake thread
  (tls_handshake_pool.py) hands its result back in a queue and wakes the thread through the
  same eventfd; the thread runs it as a step of that session at that wake-up.
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

from typing import Callable

import trio

from .engine_loop import EngineLoop
from .engine_session import IN, EngineSession, Side
from .tls_handshake_pool import HandshakePool

__all__ = ["Engine"]


class Engine(EngineLoop):
    """One per trio run (`engine()`), started with its first session: a thread of its own
    blocking in epoll.wait, so no trio scheduling is in a relayed command's path at all
    (engine_loop.py); here, how sessions come in and go on."""

    # threads for implicit-TLS handshake steps (engine_tls_accept.py); None or size 0: the
    # engine's own thread runs them (relay.tls_handshake_threads: 0). Set by engine_entry.
    handshakes: HandshakePool | None = None

    # -- sessions in and out ----------------------------------------------------------------
    async def relay(self, sess: EngineSession) -> bool:
        """Run `sess` in the engine until it ends (True) or is handed back (False)."""
        if not self._running:
            self._start()
        with self._lock:
            if self._stopped:   # its thread died (relay_engine_crash): the task path relays
                return False
            for side in sess.sides:
                self._register(side, IN)
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
            self._fresh.add(fd)
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
            self._register(side, IN)
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

    def post(self, sess: EngineSession, step: Callable[..., None], *args: object) -> None:
        """`step(*args)` of `sess` in the engine's thread at its next wake-up, as one of its
        steps (`_guarded`; skipped if `sess` has ended by then). Any thread but the engine's
        (a handshake thread: tls_handshake_pool.py); dropped once the engine has stopped."""
        with self._lock:
            if not self._stopped:
                self._posted.append((sess, step, args))
                self._wake()

    def tls_pending(self, side: Side) -> None:
        """`side`'s TLSEngine may hold plaintext no poll will report (records that came with
        its handshake's end): read it after this wake-up's events. Engine thread."""
        self._tls_waiting.add(side)

    def attach(self, sess: EngineSession, side: Side, mask: int) -> None:
        """Add `sess`'s upstream side (its connect under way; engine_login.py). Engine thread."""
        sess.upstream, sess.sides = side, (sess.client, side)
        side.mask = mask
        self._register(side, mask)

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
