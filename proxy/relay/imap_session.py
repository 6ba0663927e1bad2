"""One IMAP relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

import trio

from ..config import Upstream
from ..imap import writer
from ..net.conn import Conn
from ..session.context import CloseSession, Session, drain_guard
from ..session.imap_front import ImapFront
from .imap_relay import ImapRelay
from .imap_upstream import UpstreamIMAP, command, connect, login, relayable
from ..session.login import LoginSteps, Verdict, log_in
from ..session.sasl import Credentials

REPLIES = {  # (status, code, text) per failed verdict
    Verdict.FAILURE: (b"NO", b"AUTHENTICATIONFAILED", b"Authentication failed."),
    Verdict.TEMPFAIL: (b"NO", b"UNAVAILABLE", b"Server unavailable, try again later."),
    Verdict.THROTTLED: (b"NO", b"UNAVAILABLE",
                        b"Too many authentication failures, try again later."),
}
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
        verdict, up = await log_in(session, request.credentials, IMAP_LOGIN)
        if verdict is Verdict.SUCCESS:
            # The client's OK carries the upstream's capabilities (RFC 3501 7.1, CAPABILITY code).
            caps = b"CAPABILITY " + b" ".join(relayable(up.capabilities))
            try:
                await front.logged_in(writer.tagged(request.tag, b"OK", b"Logged in.", caps))
            except BaseException:  # cancelled before the session owns it
                await up.conn.aclose()
                raise
            return up
        status, code, text = REPLIES[verdict]
        await front.auth_failed(request.tag, writer.tagged(request.tag, status, text, code))


async def _login(session: Session, upstream: Upstream, up: UpstreamIMAP,
                 creds: Credentials) -> tuple[Verdict, bytes]:
    reply = await login(session, upstream, up, creds)
    if reply.status != b"OK":
        tempfail = reply.code in _TEMPFAIL_CODES
        return (Verdict.TEMPFAIL if tempfail else Verdict.FAILURE), reply.text
    if reply.code != b"CAPABILITY":
        await command(up, b"%s CAPABILITY\r\n" % up.next_tag(),
                      session.listener.timeouts.upstream_response)
    return Verdict.SUCCESS, reply.text


IMAP_LOGIN = LoginSteps("imap", connect, _login)
