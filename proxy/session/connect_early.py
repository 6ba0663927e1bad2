"""Connecting upstream at the client's accept (`upstreams.NAME.<protocol>.connect_early`).

Theory of operation: where the route cannot depend on the user (no `lookups:`, every route to
one upstream, one host), a relay session starts a non-blocking TCP connect to that upstream
when the client is accepted, without waiting for it (`start`). While the client reads the
proxy's greeting and sends its login, the upstream accepts and writes its greeting into the
socket's buffer. At login, `dial` (session/login.py) takes the connection (`take`), waits for
the connect only if it has not completed, and the upstream dialogue goes on as after any
connect (implicit TLS included): the upstream's accept and greeting are off the login's
critical path, and no task, timer or wake-up is spent on it before the login.

A connection older than EARLY_MAX_AGE at login (a client slow to log in: the upstream's
pre-login timeout may have closed it), or whose connect failed, is closed and a fresh connect
made; one dropped by the upstream before the login's verdict is retried once on a fresh one,
as a warm pool's (relay/imap_session.py). A session that ends without logging in closes its
connection (`discard`). `start` and `take` are plain socket calls, without trio (the relay
engine's thread may use them); `finish` waits for the connect in trio.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from dataclasses import dataclass

import trio

from ..config import Config, Upstream
from .upstream import connected_now

__all__ = ["EARLY_MAX_AGE", "EARLY_RESULTS", "EarlyConnection", "EarlyTarget", "discard", "early_targets",
           "finish", "start", "take"]

EARLY_MAX_AGE = 30.0   # seconds; below Dovecot's pre-login idle timeout (60 s)
# The `result` label of mailproxy_upstream_connect_early_total (proxy/metrics.py).
EARLY_RESULTS = ("used", "stale", "unused", "lost")


@dataclass(frozen=True, slots=True)
class EarlyTarget:
    """Where a protocol's sessions connect early: the one upstream every login routes to."""

    name: str
    upstream: Upstream
    port: int
    family: int


@dataclass(frozen=True, slots=True)
class EarlyConnection:
    name: str
    sock: socket.socket   # non-blocking, its connect in progress or done
    started: float        # time.monotonic()


def early_targets(config: Config) -> dict[str, EarlyTarget]:
    """protocol -> its target, for the relayed protocols whose one routed upstream has
    `connect_early: true` (config/upstreams.py refuses it where the route could vary)."""
    names = {route.upstream for route in config.routes}
    if config.lookups or len(names) != 1:
        return {}
    name = next(iter(names))
    upstream = config.upstreams[name]
    targets = {}
    for protocol in ("imap", "pop3"):
        svc = upstream.imap if protocol == "imap" else upstream.pop3
        if svc is not None and svc.connect_early:
            family = _family(upstream.host)
            if family is not None:
                targets[protocol] = EarlyTarget(name, upstream, svc.port, family)
    return targets


def start(target: EarlyTarget) -> EarlyConnection | None:
    """A connect to `target` under way (None if it failed at once: the login connects then)."""
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex((target.upstream.host, target.port))
    except OSError:
        sock.close()
        return None
    if error not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return EarlyConnection(target.name, sock, time.monotonic())


def take(early: EarlyConnection, name: str) -> socket.socket | None:
    """`early`'s socket for a login routed to `name` (the caller's now), or None (closed here)
    when it is for another upstream, too old, or its connect already failed."""
    sock = early.sock
    if (early.name != name or time.monotonic() - early.started >= EARLY_MAX_AGE
            or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)):
        sock.close()
        return None
    return sock


async def finish(sock: socket.socket, host: str, port: int) -> trio.abc.Stream:
    """The stream of an early connection (a Connector for open_upstream), once its connect has
    completed; OSError if it failed (`sock` closed then)."""
    try:
        if not connected_now(sock):
            await trio.lowlevel.wait_writable(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def discard(early: EarlyConnection) -> None:
    """Close an early connection no login took."""
    early.sock.close()


def _family(host: str) -> int | None:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)[0][0]
    except socket.gaierror:
        return None   # a host name: resolving it at every accept is not worth it
