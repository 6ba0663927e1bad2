"""Logging a client in: one path for the IMAP and POP3 relays and the gateway.

Theory of operation: `log_in` routes the user, asks the mode's `Attempt` (the relay: connect
and log in upstream; the gateway: check the password against the route's POP3 server) and
classifies the outcome once, as None (success) or a `Failure`: that picks the client's reply
(Failure.imap_reply / pop3_reply), the auth metric's result and the log line. Auth-failure
throttling wraps every attempt: a blocked IP or user is refused (Failure.THROTTLED) before any
upstream is asked, and a rejected password is answered only after the throttle's growing delay.
An upstream that cannot be used is counted once (mailproxy_upstream_errors_total) and logged at
its failure's level.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Generic, TypeVar

from .. import logs
from ..config import Upstream
from ..net.conn import Conn
from .context import Session
from .failures import Failure, auth_result
from .routing import route
from .sasl import Credentials
from .upstream import UpstreamError, deadline, open_upstream

__all__ = ["Attempt", "log_in", "dial", "report"]

T = TypeVar("T")


class Attempt(Generic[T]):
    """One mode's way to check credentials against the routed upstream `name`: `run` returns
    (what the session continues with, or the Failure that refused it; the upstream's reply
    text for the log). It raises UpstreamError when the upstream could not be used."""

    def __init__(self, protocol: str, mode: str,
                 run: Callable[[Session, Credentials, str, Upstream],
                               Awaitable[tuple[T | Failure, bytes]]]):
        self.protocol, self.mode, self.run = protocol, mode, run


async def log_in(session: Session, creds: Credentials, attempt: Attempt[T]) -> T | Failure:
    """The attempt's result on success (the caller owns it then, and must release it if it is
    cancelled before handing it on), else the Failure to answer with."""
    session.user = creds.user
    if session.auth_blocked(creds.user):
        outcome: T | Failure = Failure.THROTTLED
    else:
        outcome = await _attempt(session, creds, attempt)
    failure = outcome if isinstance(outcome, Failure) else None
    session.runtime.metrics.auth_attempts.labels(attempt.protocol, creds.mechanism,
                                                 auth_result(failure)).inc()
    if failure is None:
        session.runtime.throttle.success(creds.user, session.client_ip)
    elif failure is Failure.AUTH_REJECTED:
        await session.auth_failure_delay()
    return outcome


async def _attempt(session: Session, creds: Credentials, attempt: Attempt[T]) -> T | Failure:
    target = route(session.runtime.config, creds.user)
    if target is None:  # answered like a wrong password, on purpose
        logs.event("auth", **session.log_fields(), result="failure", reason="no_route")
        return Failure.AUTH_REJECTED
    name, upstream = target
    session.upstream = name
    try:
        outcome, text = await attempt.run(session, creds, name, upstream)
    except UpstreamError as exc:
        report(session, name, exc)
        return exc.failure if exc.failure is Failure.AUTH_REJECTED else Failure.AUTH_TEMPFAIL
    failure = outcome if isinstance(outcome, Failure) else None
    logs.event("auth", **session.log_fields(), upstream=name, result=auth_result(failure),
               mechanism=creds.mechanism, mode=attempt.mode, upstream_reply=logs.sanitize(text))
    return outcome


async def dial(session: Session, name: str, upstream: Upstream) -> Conn:
    """The session's connection to upstream `name` for its protocol: TCP and implicit TLS
    within the listener's `upstream_connect` timeout, timed for metrics."""
    started = time.monotonic()
    with deadline(session.listener.timeouts.upstream_connect, "connect"):
        conn = await open_upstream(upstream, session.protocol,
                                   lambda: session.runtime.upstream_tls.context(name),
                                   session.runtime.connect)
    session.runtime.metrics.upstream_connect_duration.labels(name, session.protocol).observe(
        time.monotonic() - started)
    return conn


def report(session: Session, name: str, error: UpstreamError) -> None:
    """Count and log an upstream failure once."""
    session.runtime.metrics.upstream_errors.labels(
        name, session.protocol, error.failure.label).inc()
    logs.event("upstream_error", error.failure.level, **session.log_fields(),
               upstream=name, reason=error.failure.label, detail=logs.sanitize(error.detail))
