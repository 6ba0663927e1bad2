"""Logging a client in: one path for the IMAP and POP3 relays and the gateway.

Theory of operation: `log_in` routes the user (the `lookups:` first, then the static
`routes:`; proxy/routing; a lookup may also refuse the login with its own text, a `Refusal`),
asks the mode's `Attempt` (the relay: connect and log in upstream; the gateway: check the
password against the route's POP3 server) and
classifies the outcome once, as None (success) or a `Failure`: that picks the client's reply
(Failure.imap_reply / pop3_reply), the auth metric's result and the log line. Auth-failure
throttling wraps every attempt: a blocked IP or user is refused (Failure.THROTTLED) before any
upstream is asked, and a rejected password is answered only after the throttle's growing delay.
An upstream that cannot be used is counted once (mailproxy_upstream_errors_total) and logged at
its failure's level.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from functools import partial
from typing import Awaitable, Callable, Generic, TypeVar

import trio

from .. import logs
from ..config import Upstream
from ..net.conn import Conn
from ..oauth2 import Broker, BrokerUnavailable, NotEnrolled, RefreshRefused
from ..routing.answers import LoginQuery, LookupUnavailable, Refusal
from ..routing.chain import destination
from . import connect_early
from .context import Session
from .failures import Failure, auth_result
from .oauth_sasl import TOKEN_MECHANISMS, bearer_token
from .sasl import Credentials
from .upstream import UpstreamError, deadline, open_upstream

__all__ = ["Attempt", "log_in", "dial", "report"]

T = TypeVar("T")


class Attempt(Generic[T]):
    """One mode's way to check credentials against the routed upstream `name`: `run` returns
    (what the session continues with, or the Failure that refused it; the upstream's reply
    text for the log). It raises UpstreamError when the upstream could not be used.
    `challenge` is the upstream's SASL error challenge to a refused token login (the relay's
    attempts keep it there for the session to relay)."""

    challenge: bytes | None = None

    def __init__(self, protocol: str, mode: str,
                 run: Callable[[Session, Credentials, str, Upstream],
                               Awaitable[tuple[T | Failure, bytes]]]):
        self.protocol, self.mode, self.run = protocol, mode, run


async def log_in(session: Session, creds: Credentials,
                 attempt: Attempt[T]) -> T | Failure | Refusal:
    """The attempt's result on success (the caller owns it then, and must release it if it is
    cancelled before handing it on), else the Failure to answer with, or a lookup's Refusal
    (its text is the client's reply; without `wait` the session ends after it, as nginx does)."""
    session.user = creds.user
    session.login_attempts += 1
    if session.auth_blocked(creds.user):
        outcome: T | Failure | Refusal = Failure.THROTTLED
    else:
        outcome = await _attempt(session, creds, attempt)
    failure = refusal_failure(outcome) if isinstance(outcome, Refusal) else (
        outcome if isinstance(outcome, Failure) else None)
    metrics = session.runtime.metrics
    metrics.child(metrics.auth_attempts, attempt.protocol, creds.mechanism,
                  auth_result(failure)).inc()
    if failure is None:
        session.runtime.throttle.success(creds.user, session.client_ip)
    elif isinstance(outcome, Refusal) and outcome.wait is not None:
        if failure is Failure.AUTH_REJECTED:  # counted for blocking; the directory sets the delay
            session.runtime.throttle.failure(session.client_ip, session.user)
        await trio.sleep(outcome.wait)  # nginx Auth-Wait
    elif failure is Failure.AUTH_REJECTED:
        await session.auth_failure_delay()
    return outcome


def refusal_failure(refusal: Refusal) -> Failure:
    return Failure.AUTH_TEMPFAIL if refusal.temporary else Failure.AUTH_REJECTED


async def _attempt(session: Session, creds: Credentials,
                   attempt: Attempt[T]) -> T | Failure | Refusal:
    token = creds.mechanism in TOKEN_MECHANISMS  # Auth-Method: xoauth2, Auth-Pass: the token
    query = LoginQuery(attempt.protocol, creds.user,
                       bearer_token(creds.password) if token else creds.password,
                       creds.mechanism.lower() if token else "plain",
                       session.login_attempts, session.client_ip)
    try:
        where = await destination(session.runtime.config, session.runtime.lookups, query)
    except LookupUnavailable:  # logged by the lookup chain
        logs.event("auth", **session.log_fields(), result="tempfail", reason="lookup_unavailable")
        return Failure.AUTH_TEMPFAIL
    if where is None:  # answered like a wrong password, on purpose
        logs.event("auth", **session.log_fields(), result="failure", reason="no_route")
        return Failure.AUTH_REJECTED
    if isinstance(where, Refusal):
        logs.event("auth", **session.log_fields(), result=auth_result(refusal_failure(where)),
                   reason="lookup_refused", lookup_reply=where.message)
        return where
    name, upstream = where.name, where.upstream
    session.upstream = name
    oauth2 = upstream.auth.oauth2 if upstream.auth is not None else None
    try:
        if oauth2 is not None and not token:
            return await _brokered(session, creds, attempt, name, upstream,
                                   session.runtime.oauth2.get(oauth2))
        # a token names its user inside the signed exchange: never rewritten
        upstream_creds = creds if token else where.credentials(creds)
        outcome, text = await attempt.run(session, upstream_creds, name, upstream)
    except UpstreamError as exc:
        report(session, name, exc)
        return exc.failure if exc.failure is Failure.AUTH_REJECTED else Failure.AUTH_TEMPFAIL
    _log_auth(session, attempt, name, outcome, creds.mechanism, text)
    return outcome


def _log_auth(session: Session, attempt: Attempt[T], name: str, outcome: T | Failure,
              mechanism: str, text: bytes, **extra: str) -> None:
    if not logs.enabled():
        return
    failure = outcome if isinstance(outcome, Failure) else None
    logs.event("auth", **session.log_fields(), upstream=name, result=auth_result(failure),
               mechanism=mechanism, mode=attempt.mode, upstream_reply=logs.sanitize(text),
               **extra)


async def _brokered(session: Session, creds: Credentials, attempt: Attempt[T], name: str,
                    upstream: Upstream, broker: Broker) -> T | Failure:
    """An OAuth2-brokered upstream (proxy/oauth2): the client's password against the local
    password file, then the upstream login with the user's access token. A cached token the
    upstream refuses is forgotten and the login tried once more with a refreshed one. Lookup
    rewriting does not apply: the login name is the user of both files."""
    fields = session.log_fields()
    try:
        if not await broker.check_password(creds.user, creds.password):
            logs.event("auth", **fields, upstream=name, result="failure", reason="local_password")
            return Failure.AUTH_REJECTED
        for last_try in (False, True):
            was_cached = broker.cached(creds.user) is not None
            token = await broker.access_token(creds.user)
            outcome, text = await attempt.run(session, Credentials(
                creds.user, broker.message(creds.user, token), broker.mechanism), name, upstream)
            attempt.challenge = None   # the client sent a password: no challenge to relay
            _log_auth(session, attempt, name, outcome, broker.mechanism, text, broker="oauth2")
            if outcome is not Failure.AUTH_REJECTED or not was_cached or last_try:
                return outcome
            broker.forget(creds.user, token)
        raise AssertionError("the loop returns")
    except NotEnrolled:
        logs.event("auth", **fields, upstream=name, result="failure", reason="oauth2_not_enrolled")
        return Failure.AUTH_REJECTED
    except RefreshRefused as exc:   # revoked or expired: the user must enrol again
        logs.event("auth", logging.WARNING, **fields, upstream=name, result="failure",
                   reason="oauth2_refresh_refused", error=exc.error)
        return Failure.AUTH_REJECTED
    except BrokerUnavailable as exc:
        logs.event("auth", logging.WARNING, **fields, upstream=name, result="tempfail",
                   reason="oauth2_unavailable", detail=exc.detail)
        return Failure.AUTH_TEMPFAIL


async def dial(session: Session, name: str, upstream: Upstream, steps: deadline) -> Conn:
    """The session's connection to upstream `name` for its protocol: TCP and implicit TLS,
    timed for metrics. `steps` is the caller's deadline for its whole upstream dialogue, made
    for this first step (the listener's `upstream_connect`, "connect")."""
    started = time.monotonic()
    conn = await _dial_early(session, name, upstream)
    if conn is None:
        conn = await _dial_pool(session, name, upstream, steps)
    metrics = session.runtime.metrics
    metrics.child(metrics.upstream_connect_duration, name, session.protocol).observe(
        time.monotonic() - started)
    return conn


async def _dial_early(session: Session, name: str, upstream: Upstream) -> Conn | None:
    """The connection begun at accept (session/connect_early.py) when it is usable, with
    implicit TLS done on it; None otherwise (the caller connects afresh)."""
    early, session.early = session.early, None
    session.upstream_early = False
    if early is None:
        return None
    metrics = session.runtime.metrics
    sock = connect_early.take(early, name)
    if sock is not None:
        context = partial(session.runtime.upstream_tls.context, name)
        try:
            conn = await open_upstream(upstream, session.protocol, context,
                                       partial(connect_early.finish, sock))
        except UpstreamError as exc:
            if exc.failure is not Failure.CONNECT:
                raise
        else:
            session.upstream_early = True
            metrics.child(metrics.upstream_early, name, session.protocol, "used").inc()
            return conn
    metrics.child(metrics.upstream_early, early.name, session.protocol, "stale").inc()
    return None


async def _dial_pool(session: Session, name: str, upstream: Upstream, steps: deadline) -> Conn:
    """A pool's hosts in the user's sticky order, healthy ones first (proxy/routing/pool.py):
    a connect error or timeout marks the host down for a while and the next one is tried
    (logged as `upstream_failover`), each within `upstream_connect`; the last error is raised
    when every host failed. A single host is bounded by `steps` alone."""
    health = session.runtime.host_health
    hosts = health.hosts_to_try(name, upstream.pool, session.protocol, session.user or "")
    context = partial(session.runtime.upstream_tls.context, name)
    if len(hosts) == 1:
        return await open_upstream(upstream, session.protocol, context, session.runtime.connect)
    steps.step(math.inf, "connect")   # each host has its own timeout
    for index, host in enumerate(hosts):
        try:
            with deadline(session.listener.timeouts.upstream_connect, "connect"):
                return await open_upstream(replace(upstream, host=host, hosts=()),
                                           session.protocol, context, session.runtime.connect)
        except UpstreamError as exc:
            if exc.failure not in (Failure.CONNECT, Failure.TIMEOUT) or index == len(hosts) - 1:
                raise
            health.mark_down(name, host, session.protocol)
            report(session, name, exc)
            logs.event("upstream_failover", logging.WARNING, **session.log_fields(),
                       upstream=name, host=host, next_host=hosts[index + 1])
    raise AssertionError("an upstream has at least one host")


def report(session: Session, name: str, error: UpstreamError) -> None:
    """Count and log an upstream failure once."""
    session.runtime.metrics.upstream_errors.labels(
        name, session.protocol, error.failure.label).inc()
    logs.event("upstream_error", error.failure.level, **session.log_fields(),
               upstream=name, reason=error.failure.label, detail=logs.sanitize(error.detail))
