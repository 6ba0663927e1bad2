"""Where the relay engine's login may go without I/O, and the upstream socket it logs in on.

A login is the engine's (relay/engine_login.py) when its route needs no lookup and nothing but a
plain connect: no `lookups:`, a static route to an upstream of one IP-literal host serving plain
IMAP, with pipelined logins on and no warm pool or upstream auth, whose greeting is known (so
the login goes out at once, session/early_login.py), for a client the auth throttle has no record
of and within the pre-login command budget. Its socket is the one `connect_early` began at the
client's accept when there is one (taken as trio's dial takes it, session/login.py), else a
non-blocking connect started here. Plain socket calls only: this runs in the engine's thread.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from ..config import ImapService, Upstream
from ..session import connect_early
from ..session.context import Session
from ..session.sasl import Credentials
from ..session.upstream import ip_family

__all__ = ["EngineRoute", "engine_route", "open_socket"]


@dataclass(frozen=True, slots=True)
class EngineRoute:
    name: str
    upstream: Upstream
    port: int
    family: int
    early: tuple[bytes, ...]   # the capabilities the early login is built for


def engine_route(session: Session, creds: Credentials, commands: int) -> EngineRoute | None:
    """The route of a login the engine can take (see the module docstring), else None."""
    runtime = session.runtime
    if runtime.lookups or commands >= session.listener.limits.preauth_commands \
            or not runtime.throttle.clean(session.client_ip, creds.user):
        return None
    name = runtime.config.route(creds.user)
    upstream = runtime.config.upstreams.get(name) if name is not None else None
    if name is None or upstream is None:
        return None
    svc = upstream.imap
    early = runtime.known_greetings.early("imap", name)
    if not isinstance(svc, ImapService) or svc.tls != "none" or not svc.pipelined_login \
            or upstream.auth is not None or len(upstream.pool) != 1 or not early \
            or svc.warm_pool is not None:
        return None
    family = ip_family(upstream.host)
    return None if family is None else EngineRoute(name, upstream, svc.port, family, early)


def open_socket(session: Session, route: EngineRoute) -> socket.socket | None:
    """The connection begun at accept (`session.upstream_early` then), or a connect started
    now; None when that connect failed at once (trio's login connects then)."""
    sock = _take_early(session, route.name)
    if sock is not None:
        return sock
    sock = socket.socket(route.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    error = sock.connect_ex((route.upstream.host, route.port))
    if error not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def _take_early(session: Session, name: str) -> socket.socket | None:
    early, session.early = session.early, None
    session.upstream_early = False
    if early is None:
        return None
    sock = connect_early.take(early, name)
    metrics = session.runtime.metrics
    metrics.child(metrics.upstream_early, early.name, "imap",
                  "stale" if sock is None else "used").inc()
    session.upstream_early = sock is not None
    return sock
