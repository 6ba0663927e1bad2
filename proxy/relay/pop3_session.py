"""One POP3 relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

import trio

from ..config import Upstream
from ..pop3 import writer
from ..net.conn import Conn
from ..session.context import CloseSession, Session, drain_guard
from ..session.login import LoginSteps, Verdict, log_in
from ..session.pop3_front import Pop3Front
from .pop3_relay import Pop3Relay
from .pop3_upstream import UpstreamPOP3, connect, is_tempfail, login
from ..session.sasl import Credentials

# RFC 3206: [AUTH] is a credentials problem, [SYS/TEMP] a temporary system problem.
REPLIES = {
    Verdict.FAILURE: writer.err(b"Authentication failed.", b"AUTH"),
    Verdict.TEMPFAIL: writer.err(b"Server unavailable, try again later.", b"SYS/TEMP"),
    Verdict.THROTTLED: writer.err(b"Too many authentication failures, try again later.",
                                  b"SYS/TEMP"),
}


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
        verdict, up = await log_in(session, request.credentials, POP3_LOGIN)
        if verdict is Verdict.SUCCESS:
            try:
                await front.logged_in(writer.ok(b"Logged in."))
            except BaseException:  # cancelled before the session owns it
                await up.conn.aclose()
                raise
            return up
        await front.auth_failed(REPLIES[verdict])


async def _login(session: Session, upstream: Upstream, up: UpstreamPOP3,
                 creds: Credentials) -> tuple[Verdict, bytes]:
    status = await login(session, upstream, up, creds)
    if status.ok:
        return Verdict.SUCCESS, status.text
    return (Verdict.TEMPFAIL if is_tempfail(status) else Verdict.FAILURE), status.text


POP3_LOGIN = LoginSteps("pop3", connect, _login)
