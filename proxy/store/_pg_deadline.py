"""A bound on each PostgreSQL store call that holds when the database server is frozen.

Theory of operation: a store call runs in a worker thread, blocked in libpq on its socket. A
server that stops answering without closing anything (its processes stopped, a paused VM, a
stuck disk) leaves that thread waiting for good: the server's kernel still acknowledges what
we send, so neither TCP keepalive nor TCP_USER_TIMEOUT fires, and `statement_timeout` is the
frozen server's own timer. So the bound is kept here, on our side
(`gateway.store_query_timeout`): a call takes a `Watch` from the store's `Deadlines` when its
thread starts, and records in it the connection it is using (the pool's check of a
connection included, `checked`). One reaper thread per store expires the watches whose time
has passed: it shuts the socket of the watched connection down, libpq sees the connection
closed, and the call fails at once; the pool drops that connection. The store answers such a
call with `StoreUnavailable` (NO [UNAVAILABLE]) and never runs it again on another connection;
a call cut during its COMMIT first asks the server whether that COMMIT happened
(`_pg_commit.py`). When the server resumes, new connections are made as after a restart.

A watch's deadline is the call's own (`Deadlines.call(deadline)`; by default
`store_query_timeout` from now): a writing call's statements and COMMIT end earlier than its
reading calls, to keep time for settling a cut COMMIT within the same bound (`_pg_commit.py`).
The watches in flight are at most one per worker thread (the store's pool size, plus fetch
leases being taken), so the reaper finds the earliest deadline by looking at each, and is woken
only when a call registers a deadline earlier than the one it sleeps until.

`tcp_options()` sets TCP keepalive and TCP_USER_TIMEOUT on every store connection: they cover
the other failure, a server host gone from the network without a FIN, for connections that
sit idle (the change feed's LISTEN, a fetch lease) or wait for an acknowledgement.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from typing import Any

import psycopg
import psycopg_pool

from .. import logs

__all__ = ["Deadlines", "Watch", "checked", "tcp_options", "DEFAULT_QUERY_TIMEOUT_S"]

DEFAULT_QUERY_TIMEOUT_S = 30.0
KEEPALIVE_PROBES = 3   # unanswered keepalive probes before the kernel drops a connection

_current = threading.local()   # the Watch of the call this worker thread is running


def tcp_options(timeout_s: float) -> dict[str, Any]:
    """libpq connection parameters: a peer silent for about `timeout_s` (keepalive probes
    unanswered, or data unacknowledged) ends the connection."""
    step = max(1, math.ceil(timeout_s / (KEEPALIVE_PROBES + 1)))
    return {"keepalives": 1, "keepalives_idle": step, "keepalives_interval": step,
            "keepalives_count": KEEPALIVE_PROBES,
            "tcp_user_timeout": max(1000, round(timeout_s * 1000))}


class Watch:
    """One store call: its deadline and the connection it is using right now."""

    __slots__ = ("deadline", "expired", "_conn", "_lock")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def use(self, conn: psycopg.Connection[Any] | None) -> None:
        """The call now waits on `conn` (None: on no connection)."""
        with self._lock:
            self._conn = conn
            if conn is not None and self.expired:
                _shut_down(conn)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._conn is not None:
                _shut_down(self._conn)


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Wake whatever waits on `conn`: libpq then finds it closed (the descriptor stays open
    until libpq closes it, so no other connection can reuse its number meanwhile)."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:   # already closed
        return
    with socket.socket(fileno=os.dup(fd)) as sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def checked(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection before handing it out, under the call's watch."""
    watch: Watch | None = getattr(_current, "watch", None)
    if watch is not None:
        watch.use(conn)
    try:
        psycopg_pool.ConnectionPool.check_connection(conn)
    finally:
        if watch is not None:
            watch.use(None)


class Deadlines:
    """The watches of a store's calls in flight, and the reaper thread that expires them."""

    def __init__(self, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError("the store query timeout must be positive")
        self.timeout_s = timeout_s
        self._watches: set[Watch] = set()
        self._wake = threading.Condition()
        self._sleeping_until = math.inf   # the deadline the reaper waits for
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, name="mailproxy-store-deadlines",
                                        daemon=True)
        self._reaper.start()

    @contextlib.contextmanager
    def call(self, deadline: float | None = None) -> Any:
        """Run one store call (in its worker thread) under a new watch, which it yields: cut at
        `deadline` (time.monotonic()), by default `timeout_s` from now."""
        watch = Watch(time.monotonic() + self.timeout_s if deadline is None else deadline)
        with self._wake:
            self._watches.add(watch)
            if watch.deadline < self._sleeping_until:
                self._wake.notify()
        _current.watch = watch
        try:
            yield watch
        finally:
            _current.watch = None
            with self._wake:
                self._watches.discard(watch)

    def _reap(self) -> None:
        with self._wake:
            while not self._closed:
                watch = min(self._watches, key=_deadline, default=None)
                delay = math.inf if watch is None else watch.deadline - time.monotonic()
                if delay > 0:
                    self._sleeping_until = math.inf if watch is None else watch.deadline
                    self._wake.wait(None if watch is None else delay)
                    continue
                assert watch is not None
                self._watches.discard(watch)
                watch.expire()
                logs.event("store_call_cut", logging.WARNING, timeout=f"{self.timeout_s:g}s")

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._reaper.join()


def _deadline(watch: Watch) -> float:
    return watch.deadline
