"""One POP3 relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

from ..config import Upstream
from ..net.conn import Conn
from ..pop3 import events, writer
from ..routing.answers import Refusal
from ..session.context import Session
from ..session.failures import Failure
from ..session.login import log_in
from ..session.pop3_front import Pop3Front
from ..session.sasl import Credentials
from ..session.upstream import UpstreamError, deadline
from .pop3_relay import Pop3Relay
from .pop3_upstream import UpstreamPOP3, connect, is_tempfail, login
from .relay_session import RelayLogin, closed_on_failure, connected, run_session, warm_or_fresh


async def handle(session: Session, conn: Conn) -> None:
    """Run the session to its end. Never raises for anything the peers do."""
    await run_session(session, Pop3Front(session, conn), _authenticate, Pop3Relay)


async def _authenticate(session: Session, front: Pop3Front) -> UpstreamPOP3:
    while True:
        request = await front.next_login()
        attempt = RelayLogin("pop3", _attempt)
        outcome = await log_in(session, request.credentials, attempt)
        if isinstance(outcome, Failure):
            challenge = attempt.challenge
            if challenge is not None and not await front.sasl_challenge(challenge):
                await front.auth_cancelled()  # RFC 5034 4: "*" cancels
                continue
            await front.auth_failed(outcome)
            continue
        if isinstance(outcome, Refusal):
            await front.auth_refused(outcome)
            continue
        try:
            await front.logged_in(writer.ok(b"Logged in."))
        except BaseException:  # cancelled before the session owns it
            await outcome.conn.aclose()
            raise
        return outcome


async def _attempt(session: Session, creds: Credentials, name: str, upstream: Upstream
                   ) -> tuple[UpstreamPOP3 | Failure, bytes, bytes | None]:
    """Connect and log in upstream; the connection is the caller's only on success. A refusal
    comes with the upstream's SASL error challenge, if it sent one. A warm connection the
    upstream dropped before its verdict, or that got a temporary failure, is replaced once by
    a fresh one."""
    up, status = await warm_or_fresh(session, "pop3", name, lambda warm: _log_in_upstream(
        session, creds, name, upstream, warm=warm))
    if status.ok:
        return up, status.text, None
    await up.conn.aclose()
    return (Failure.AUTH_TEMPFAIL if is_tempfail(status) else Failure.AUTH_REJECTED), \
        status.text, up.sasl_challenge


async def _log_in_upstream(session: Session, creds: Credentials, name: str, upstream: Upstream,
                           *, warm: bool) -> tuple[UpstreamPOP3, events.StatusLine]:
    timeouts = session.listener.timeouts
    with deadline(timeouts.upstream_connect, "connect") as steps:   # one scope for all steps
        up = await connected(session, connect(session, name, upstream, steps, creds, warm=warm))
        async with closed_on_failure(up, up.warm):
            steps.step(timeouts.upstream_response, "login")
            status = await login(session, upstream, up, creds)
            if up.warm and not status.ok and is_tempfail(status):
                # maybe a login process of the upstream's previous run (a restart):
                # asked again, once, on a fresh connection
                raise UpstreamError(Failure.UPSTREAM, "temporary failure on a warm connection")
    return up, status
