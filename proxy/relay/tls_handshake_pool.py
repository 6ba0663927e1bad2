"""A small bounded pool of threads for the CPU-heavy steps of TLS server handshakes (issue 16).

Theory of operation: a server handshake step (`TLSEngine.receive_data` + `handshake`: the key
exchange, the signature with the certificate's key, the Finished) costs 0.3-0.7 ms of OpenSSL.
Run in the relay engine's thread (engine_tls_accept.py), every relayed session of the engine
waits that long per step: a TLS login storm then stalls plain sessions' commands. OpenSSL
releases the GIL in `SSLObject.do_handshake`, so the step runs here on another thread (and,
with two cores, another core) while the engine's thread goes on moving bytes.

- `submit(job)` queues a callable; one of at most `size` threads named `tls-handshake-N` runs
  it (`size` 0: the caller runs its steps itself, `submit` refuses; a reload changes `size`
  in place, threads above it leave after their job, but the last one only once the queue is
  empty: each queued step's session waits for it). The queue holds at most `bound` jobs:
  `submit` returns False when it is full, so a storm cannot grow memory without limit (the
  caller runs that step itself: engine_tls_accept.py).
- Threads are started on demand (more jobs queued than threads waiting for one; a job is
  taken under the lock that counts them) and leave after IDLE_EXIT
  seconds without a job, so an engine that no longer handshakes keeps no thread, and a trio
  run's end (its engine gone) leaves none behind for long. Daemon threads: never in the way of
  the process's exit.
- A job never raises here: the caller's job catches what it expects; anything else is a bug,
  logged (session_crash's words) and the thread goes on.
- The job hands its result back itself (engine_tls_accept.py: `Engine.post`, the engine's own
  wake-up eventfd); nothing here knows about the engine, TLS or sessions.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from typing import Callable

from .. import logs

__all__ = ["HANDSHAKE_QUEUE", "IDLE_EXIT", "HandshakePool"]

HANDSHAKE_QUEUE = 256   # handshake steps waiting for a thread at most (each holds one chunk read)
IDLE_EXIT = 30.0        # seconds a thread waits for a job before it leaves


class HandshakePool:
    """At most `size` threads running queued jobs (0: not used); at most `bound` jobs waiting."""

    _numbers = itertools.count(1)   # thread names, unique in the process

    def __init__(self, size: int, bound: int = HANDSHAKE_QUEUE, idle_exit: float = IDLE_EXIT):
        if size < 0 or bound < 1:
            raise ValueError("a handshake pool needs a size and a queue")
        self.size, self.bound = size, bound
        self._jobs: deque[Callable[[], None]] = deque()
        self._idle_exit = idle_exit
        self._cond = threading.Condition(threading.Lock())
        self.running = 0   # threads alive
        self._idle = 0     # threads waiting for a job (a job is taken under the same lock)

    @property
    def queued(self) -> int:
        return len(self._jobs)

    @property
    def settled(self) -> bool:
        """No job waiting and every thread waiting for one."""
        with self._cond:
            return not self._jobs and self._idle == self.running

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue `job` for a thread; False (and nothing queued) when the queue is full or the
        size is 0."""
        with self._cond:
            if len(self._jobs) >= self.bound or not self.size:   # (size 0 since a reload)
                return False
            self._jobs.append(job)
            if len(self._jobs) > self._idle and self.running < self.size:
                self.running += 1
                try:
                    threading.Thread(target=self._work, daemon=True,
                                     name=f"tls-handshake-{next(self._numbers)}").start()
                except BaseException:   # none (a pids limit): not counted, so the next submit
                    self.running -= 1   # starts one, which runs this job too (its caller's
                    raise               # session ends on this error: the job then skips)
            self._cond.notify()
        return True

    def _work(self) -> None:
        jobs, cond = self._jobs, self._cond
        with cond:
            while True:
                # made smaller by a reload: one fewer, but never the last while jobs wait (their
                # sessions wait for them, busy), and the job it was woken for goes to another
                if self.running > self.size and (self.running > 1 or not jobs):
                    self.running -= 1
                    if jobs:
                        cond.notify()
                    return
                if not jobs:
                    self._idle += 1
                    woken = cond.wait(self._idle_exit)
                    self._idle -= 1
                    if not woken and not jobs:   # idle for IDLE_EXIT: leave
                        self.running -= 1
                        return
                    continue
                job = jobs.popleft()
                cond.release()
                try:
                    job()
                except Exception:   # a bug in the job: logged, the pool goes on
                    logs.event("session_crash", logging.ERROR, exc_info=True)
                finally:
                    del job
                    cond.acquire()
