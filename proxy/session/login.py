"""Logging a client in upstream, shared by the IMAP and POP3 relays.

Route the user, connect, log in with the client's credentials, and classify the outcome once
(`Verdict`): that picks the client's reply (in the protocol module), the auth metric and the log
line. Auth-failure throttling wraps it: a blocked IP or user is refused before any upstream is
asked, and a rejected password is answered only after the throttle's growing delay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .. import logs
from ..config import Upstream
from .failures import Failure
from .context import Session
from .routing import route
from .sasl import Credentials
from .upstream import UpstreamError, report


class Verdict(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"      # wrong credentials (or no route: not told apart, on purpose)
    TEMPFAIL = "tempfail"    # the upstream could not be used; try again later
    THROTTLED = "throttled"  # too many failures from this IP or for this user


@dataclass(frozen=True)
class LoginSteps:
    """The protocol-specific part: `connect` returns an upstream connection (with `.conn`);
    `login` returns the verdict and the upstream's reply text. Both raise UpstreamError."""

    protocol: str
    connect: Callable[[Session, str, Upstream], Awaitable[Any]]
    login: Callable[[Session, Upstream, Any, Credentials], Awaitable[tuple[Verdict, bytes]]]


async def log_in(session: Session, creds: Credentials, steps: LoginSteps) -> tuple[Verdict, Any]:
    """Returns (verdict, upstream connection or None). Only SUCCESS returns a connection; the
    caller owns it then (and must close it if it is cancelled before handing it on)."""
    session.user = creds.user
    if session.auth_blocked(creds.user):
        verdict, up = Verdict.THROTTLED, None
    else:
        verdict, up = await _attempt(session, creds, steps)
    session.runtime.metrics.auth_attempts.labels(steps.protocol, creds.mechanism,
                                                 verdict.value).inc()
    if verdict is Verdict.SUCCESS and session.runtime.throttle is not None:
        session.runtime.throttle.success(creds.user, session.client_ip)
    elif verdict is Verdict.FAILURE:
        await session.auth_failure_delay()
    return verdict, up


async def _attempt(session: Session, creds: Credentials, steps: LoginSteps):
    target = route(session.runtime.config, creds.user)
    if target is None:
        logs.event("auth", **session.log_fields(), result="failure", reason="no_route")
        return Verdict.FAILURE, None
    name, upstream = target
    session.upstream = name
    up = None
    try:
        up = await steps.connect(session, name, upstream)
        verdict, text = await steps.login(session, upstream, up, creds)
    except UpstreamError as exc:
        if up is not None:
            await up.conn.aclose()
        report(session, name, exc)
        return (Verdict.FAILURE if exc.failure is Failure.AUTH_REJECTED else Verdict.TEMPFAIL), None
    except BaseException:  # cancelled (login timeout, drain): never leave the upstream open
        if up is not None:
            await up.conn.aclose()
        raise
    logs.event("auth", **session.log_fields(), upstream=name, result=verdict.value,
               mechanism=creds.mechanism, upstream_reply=logs.sanitize(text))
    if verdict is not Verdict.SUCCESS:
        await up.conn.aclose()
        return verdict, None
    return verdict, up
