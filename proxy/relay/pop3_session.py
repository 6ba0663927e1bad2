"""One POP3 relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

import trio

from .. import logs
from ..failures import Failure
from ..pop3 import writer
from ..net.conn import Conn
from .context import CloseSession, Session, drain_guard
from .pop3_front import Pop3Front, Pop3Login
from .pop3_relay import Pop3Relay
from .pop3_upstream import UpstreamPOP3, connect, is_tempfail, login
from .routing import route
from .upstream import UpstreamError, report

# RFC 3206: [AUTH] is a credentials problem, [SYS/TEMP] a temporary system problem.
REPLY_AUTH_FAILED = writer.err(b"Authentication failed.", b"AUTH")
REPLY_UNAVAILABLE = writer.err(b"Server unavailable, try again later.", b"SYS/TEMP")
REPLY_THROTTLED = writer.err(b"Too many authentication failures, try again later.", b"SYS/TEMP")


async def handle(session: Session, conn: Conn) -> None:
    front = Pop3Front(session, conn)
    upstream: UpstreamPOP3 | None = None
    try:
        async with drain_guard(session, conn, writer.err(b"Server shutting down.", b"SYS/TEMP")):
            with trio.move_on_after(session.listener.timeouts.login) as login_scope:
                await front.greet()
                upstream = await _authenticate(session, front)
        if session.close_reason == "shutdown":
            return
        if login_scope.cancelled_caught:
            session.runtime.metrics.limit_hits.labels("login_timeout").inc()
            await conn.send(writer.err(b"Login timeout."))
            session.close_reason = "login_timeout"
            return
        await Pop3Relay(session, front.conn, front.parser.take_unconsumed(), upstream).run()
    except CloseSession as exc:
        session.close_reason = exc.reason
    finally:
        if upstream is not None:
            await upstream.conn.aclose()


async def _authenticate(session: Session, front: Pop3Front) -> UpstreamPOP3:
    while True:
        request = await front.next_login()
        session.user = request.credentials.user
        if session.auth_blocked(session.user):
            result = REPLY_THROTTLED
        else:
            result = await _upstream_login(session, front, request)
        if isinstance(result, UpstreamPOP3):
            session.runtime.throttle.success(session.user)
            return result
        if result is REPLY_AUTH_FAILED:
            await session.auth_failure_delay()
        await front.auth_failed(result)


async def _upstream_login(session: Session, front: Pop3Front, request: Pop3Login):
    creds = request.credentials
    attempts = session.runtime.metrics.auth_attempts
    target = route(session.runtime.config, creds.user)
    if target is None:
        attempts.labels("pop3", creds.mechanism, "failure").inc()
        logs.event("auth", **session.log_fields(), result="failure", reason="no_route")
        return REPLY_AUTH_FAILED
    name, upstream = target
    session.upstream = name
    up: UpstreamPOP3 | None = None
    try:
        up = await connect(session, name, upstream)
        status = await login(session, upstream, up, creds)
    except UpstreamError as exc:
        if up is not None:
            await up.conn.aclose()
        report(session, name, exc)
        result = "failure" if exc.failure is Failure.AUTH_REJECTED else "tempfail"
        attempts.labels("pop3", creds.mechanism, result).inc()
        return REPLY_AUTH_FAILED if result == "failure" else REPLY_UNAVAILABLE
    if not status.ok:
        await up.conn.aclose()
        result = "tempfail" if is_tempfail(status) else "failure"
        attempts.labels("pop3", creds.mechanism, result).inc()
        logs.event("auth", **session.log_fields(), upstream=name, result=result,
                   upstream_reply=logs.sanitize(status.text))
        return REPLY_UNAVAILABLE if result == "tempfail" else REPLY_AUTH_FAILED
    attempts.labels("pop3", creds.mechanism, "success").inc()
    logs.event("auth", **session.log_fields(), upstream=name, result="success",
               mechanism=creds.mechanism)
    await front.conn.send(writer.ok(b"Logged in."))
    return up
