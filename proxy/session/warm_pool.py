"""Warm upstream connections: opened and greeted before the logins that will use them.

Theory of operation: for an upstream service with `warm_pool:` (config/upstreams.py), a filler
task (relay/warm_fill.py) keeps up to `size` connections open whose greeting (IMAP: and
capabilities; POP3: and CAPA) has already been read. A relay login takes one (`WarmPools.take`)
instead of connecting, so the upstream's accept and greeting leave the login's critical path;
the login itself (with ID or XCLIENT for the real client) is written as on a fresh connection.
Each connection serves one session. One older than `max_age`, or that the upstream has closed
or written to since its greeting (a pre-login timeout's BYE, a restart), is closed, never
handed out: `take` peeks at the socket without blocking. If the upstream still drops a taken
connection before the login's verdict, the login raises `WarmConnectionLost` and is tried once
more on a fresh connection (relay/imap_session.py, pop3_session.py).

The pool is keyed by the routed upstream (protocol, name) and serves only its one host and
port: a lookup that names another host under the same upstream's settings connects afresh.

`take` is plain Python under a lock, with no trio and no waiting: the relay engine's thread may
call it. It owns nothing afterwards: the returned socket is the caller's to use and close.
Reload and drain `close()` the pools: their connections are closed, later takes answer None.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Protocol

from .. import logs
from ..config import Config, Upstream
from ..metrics import Metrics

__all__ = ["WARM_EVENTS", "WarmConnection", "WarmConnectionLost", "WarmPool", "WarmPools"]

# The `event` label of mailproxy_upstream_warm_pool_total (proxy/metrics.py).
WARM_EVENTS = ("hit", "miss", "stale", "expired", "lost", "opened", "failed")


@dataclass(frozen=True, slots=True)
class WarmConnection:
    """A connected, non-blocking socket whose greeting has been read, and what it said."""

    sock: socket.socket
    capabilities: tuple[bytes, ...]   # IMAP: greeting or CAPABILITY; POP3: CAPA
    xclient: bool = False             # POP3: the greeting offered XCLIENT (Dovecot)
    tags_used: int = 0                # IMAP: the proxy's tags already used (P1..Pn)
    born: float = 0.0                 # time.monotonic() when greeted


class WarmConnectionLost(Exception):
    """A taken warm connection was dropped by the upstream before the login's verdict."""


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class WarmPool:
    """The warm connections of one upstream service. Thread-safe."""

    def __init__(self, protocol: str, name: str, host: str, port: int, size: int,
                 max_age: float, connect_timeout: float, counters: Mapping[str, _Counter]):
        self.protocol, self.name, self.host, self.port = protocol, name, host, port
        self.size, self.max_age, self.connect_timeout = size, max_age, connect_timeout
        self._counters = counters   # event -> its series (thread-safe increments)
        self._idle: deque[WarmConnection] = deque()
        self._lock = threading.Lock()
        self.closed = False
        self.wake: Callable[[], None] = _nothing   # the filler's: "one was taken, or closed"

    def take(self) -> WarmConnection | None:
        """The oldest usable connection (the caller's now), or None. Never blocks."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn = self._idle.popleft()
                if now - conn.born >= self.max_age:
                    self._discard(conn, "expired")
                elif not _quiet(conn.sock):
                    self._discard(conn, "stale")
                else:
                    self.count("hit")
                    break
            else:
                conn = None
                self.count("miss")
        self.wake()
        return conn

    def missing(self) -> int:
        """How many connections the filler should open now."""
        with self._lock:
            return 0 if self.closed else self.size - len(self._idle)

    def put(self, conn: WarmConnection) -> None:
        """A freshly greeted connection (the pool's now; closed if the pool is closed or full)."""
        with self._lock:
            if self.closed or len(self._idle) >= self.size:
                conn.sock.close()
            else:
                self._idle.append(conn)
                self.count("opened")

    def expire_in(self) -> float:
        """Close what is too old or stale; seconds until the next one is too old (inf: none)."""
        now = time.monotonic()
        with self._lock:
            kept: deque[WarmConnection] = deque()
            for conn in self._idle:
                if now - conn.born >= self.max_age:
                    self._discard(conn, "expired")
                elif not _quiet(conn.sock):
                    self._discard(conn, "stale")
                else:
                    kept.append(conn)
            self._idle = kept
            return kept[0].born + self.max_age - now if kept else float("inf")

    def close(self) -> int:
        """Close the pool and its connections; how many were closed."""
        with self._lock:
            self.closed, idle, self._idle = True, self._idle, deque()
        for conn in idle:
            conn.sock.close()
        self.wake()
        return len(idle)

    def count(self, event: str) -> None:
        self._counters[event].inc()

    def _discard(self, conn: WarmConnection, event: str) -> None:
        conn.sock.close()
        self.count(event)


class WarmPools:
    """The runtime's warm pools, by (protocol, upstream name)."""

    def __init__(self, pools: dict[tuple[str, str], WarmPool] | None = None):
        self._pools = pools or {}

    @classmethod
    def of(cls, config: Config, metrics: Metrics) -> WarmPools:
        """A pool for each upstream service with `warm_pool:` that a relay listener uses (its
        metric series made at 0)."""
        relayed = {lst.protocol for lst in config.listeners if lst.mode == "relay"}
        pools: dict[tuple[str, str], WarmPool] = {}
        for name, upstream in config.upstreams.items():
            for protocol in sorted(relayed):
                svc = upstream.imap if protocol == "imap" else upstream.pop3
                if svc is None or svc.warm_pool is None:
                    continue
                timeout = min(lst.timeouts.upstream_connect for lst in config.listeners
                              if lst.mode == "relay" and lst.protocol == protocol)
                pools[(protocol, name)] = WarmPool(
                    protocol, name, upstream.host, svc.port, svc.warm_pool.size,
                    svc.warm_pool.max_age, timeout,
                    {e: metrics.upstream_warm.labels(name, protocol, e) for e in WARM_EVENTS})
        return cls(pools)

    def __bool__(self) -> bool:
        return bool(self._pools)

    def __iter__(self) -> Iterator[WarmPool]:
        return iter(self._pools.values())

    def take(self, protocol: str, name: str, upstream: Upstream) -> WarmConnection | None:
        """A warm connection to `upstream` (routed as `name`) for `protocol`, or None: the
        caller connects itself then. Thread-safe, never blocks, no trio."""
        pool = self._pools.get((protocol, name))
        if pool is None or pool.host != upstream.host:
            return None
        svc = upstream.imap if protocol == "imap" else upstream.pop3
        if svc is None or svc.port != pool.port:
            return None
        return pool.take()

    def lost(self, protocol: str, name: str) -> None:
        """A taken connection was dropped before the login's verdict (retried afresh)."""
        pool = self._pools.get((protocol, name))
        if pool is not None:
            pool.count("lost")

    def close(self, reason: str = "reload") -> None:
        """Reload or drain (`reason`): every pooled connection closed, takes answer None."""
        for pool in self._pools.values():
            if not pool.closed:
                logs.event("upstream_warm_pool_closed", upstream=pool.name,
                           protocol=pool.protocol, reason=reason, closed=pool.close())

    def drained(self) -> None:
        """The drain's callback (Drain.subscribe)."""
        self.close("drain")

    @property
    def closed(self) -> bool:
        return all(pool.closed for pool in self._pools.values())


def _quiet(sock: socket.socket) -> bool:
    """Whether the upstream has said nothing since its greeting and not closed: a pooled
    connection is silent until the proxy speaks; a BYE, EOF or error makes it unusable."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)   # data or b"" (EOF)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _nothing() -> None:
    pass
