"""One IMAP relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

import trio

from .. import logs
from ..failures import Failure
from ..imap import writer
from ..net.conn import Conn
from .context import CloseSession, Session, drain_guard
from .imap_front import ImapFront, LoginRequest
from .imap_relay import ImapRelay
from .imap_upstream import UpstreamIMAP, command, connect, login, relayable
from .routing import route
from .upstream import UpstreamError, report

REPLY_AUTH_FAILED = (b"NO", b"AUTHENTICATIONFAILED", b"Authentication failed.")
REPLY_UNAVAILABLE = (b"NO", b"UNAVAILABLE", b"Server unavailable, try again later.")
REPLY_THROTTLED = (b"NO", b"UNAVAILABLE", b"Too many authentication failures, try again later.")
# Upstream NO codes that mean "try again later", not "wrong password" (RFC 5530).
_TEMPFAIL_CODES = {b"UNAVAILABLE", b"SERVERBUG", b"LIMIT", b"INUSE", b"EXPUNGEISSUED"}


async def handle(session: Session, conn: Conn) -> None:
    """Run the session to its end. Never raises for anything the peers do."""
    front = ImapFront(session, conn)
    upstream: UpstreamIMAP | None = None
    try:
        async with drain_guard(session, conn, b"* BYE Server shutting down.\r\n"):
            with trio.move_on_after(session.listener.timeouts.login) as login_scope:
                await front.greet()
                upstream = await _authenticate(session, front)
        if session.close_reason == "shutdown":
            return
        if login_scope.cancelled_caught:
            session.runtime.metrics.limit_hits.labels("login_timeout").inc()
            await conn.send(b"* BYE Login timeout.\r\n")
            session.close_reason = "login_timeout"
            return
        relay = ImapRelay(session, front.conn, front.parser.take_unconsumed(), upstream,
                          upstream.parser.take_unconsumed())
        await relay.run()
    except CloseSession as exc:
        session.close_reason = exc.reason
    finally:
        if upstream is not None:
            await upstream.conn.aclose()


async def _authenticate(session: Session, front: ImapFront) -> UpstreamIMAP:
    while True:
        request = await front.next_login()
        session.user = request.credentials.user
        if session.auth_blocked(session.user):
            result = REPLY_THROTTLED
        else:
            result = await _upstream_login(session, front, request)
        if isinstance(result, UpstreamIMAP):
            session.runtime.throttle.success(session.user)
            return result
        if result is REPLY_AUTH_FAILED:
            await session.auth_failure_delay()
        status, code, text = result
        await front.auth_failed(request.tag, writer.tagged(request.tag, status, text, code))


async def _upstream_login(session: Session, front: ImapFront, request: LoginRequest):
    """Log in upstream; on success answer the client and return the upstream connection,
    otherwise return the (status, code, text) to send."""
    creds = request.credentials
    metrics = session.runtime.metrics
    attempts = metrics.auth_attempts
    target = route(session.runtime.config, creds.user)
    if target is None:
        attempts.labels("imap", creds.mechanism, "failure").inc()
        logs.event("auth", **session.log_fields(), result="failure", reason="no_route")
        return REPLY_AUTH_FAILED
    name, upstream = target
    session.upstream = name
    up: UpstreamIMAP | None = None
    try:
        up = await connect(session, name, upstream)
        reply = await login(session, upstream, up, creds)
        if reply.status != b"OK":
            await up.conn.aclose()
            tempfail = reply.code in _TEMPFAIL_CODES
            result = "tempfail" if tempfail else "failure"
            attempts.labels("imap", creds.mechanism, result).inc()
            logs.event("auth", **session.log_fields(), upstream=name, result=result,
                       upstream_reply=logs.sanitize(reply.text))
            return REPLY_UNAVAILABLE if tempfail else REPLY_AUTH_FAILED
        if not reply.code == b"CAPABILITY":
            await command(up, b"%s CAPABILITY\r\n" % up.next_tag(),
                          session.listener.timeouts.upstream_response)
    except UpstreamError as exc:
        if up is not None:
            await up.conn.aclose()
        report(session, name, exc)
        result = "tempfail" if exc.failure is not Failure.AUTH_REJECTED else "failure"
        attempts.labels("imap", creds.mechanism, result).inc()
        return REPLY_UNAVAILABLE if result == "tempfail" else REPLY_AUTH_FAILED
    attempts.labels("imap", creds.mechanism, "success").inc()
    logs.event("auth", **session.log_fields(), upstream=name, result="success",
               mechanism=creds.mechanism)
    # The client's tagged OK carries the upstream's capabilities (RFC 3501 7.1, CAPABILITY code).
    caps = b"CAPABILITY " + b" ".join(relayable(up.capabilities))
    await front.conn.send(writer.tagged(request.tag, b"OK", b"Logged in.", caps))
    return up
