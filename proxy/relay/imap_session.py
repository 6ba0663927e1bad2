"""One IMAP relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

from ..config import Upstream
from ..imap import events, writer
from ..net.conn import Conn
from ..routing.answers import Refusal
from ..session.context import Session
from ..session.failures import Failure
from ..session.imap_front import ImapFront
from ..session.login import log_in
from ..session.sasl import Credentials
from ..session.upstream import UpstreamError, deadline
from ..session.warm_pool import WarmConnectionLost
from .imap_relay import ImapRelay
from .imap_upstream import UpstreamIMAP, command, connect, login, relayable
from .relay_session import RelayLogin, count_lost, run_session

# Upstream NO codes that mean "try again later", not "wrong password" (RFC 5530).
_TEMPFAIL_CODES = {b"UNAVAILABLE", b"SERVERBUG", b"LIMIT", b"INUSE", b"EXPUNGEISSUED"}


async def handle(session: Session, conn: Conn) -> None:
    """Run the session to its end. Never raises for anything the peers do."""
    await run_session(session, ImapFront(session, conn), _authenticate, ImapRelay)


async def _authenticate(session: Session, front: ImapFront) -> UpstreamIMAP:
    while True:
        request = await front.next_login()
        attempt = RelayLogin("imap", _attempt)
        outcome = await log_in(session, request.credentials, attempt)
        if isinstance(outcome, Failure):
            challenge = attempt.challenge
            if challenge is not None and not await front.sasl_challenge(challenge):
                await front.login_failed(writer.tagged(  # RFC 3501 6.2.2: "*" cancels
                    request.tag, b"BAD", b"Authentication cancelled."))
                continue
            await front.auth_failed(request.tag, outcome)
            continue
        if isinstance(outcome, Refusal):
            await front.auth_refused(request.tag, outcome)
            continue
        # The client's OK carries the upstream's capabilities (RFC 3501 7.1, CAPABILITY code).
        caps = b"CAPABILITY " + b" ".join(relayable(outcome.capabilities))
        try:
            await front.logged_in(writer.tagged(request.tag, b"OK", b"Logged in.", caps))
        except BaseException:  # cancelled before the session owns it
            await outcome.conn.aclose()
            raise
        return outcome


async def _attempt(session: Session, creds: Credentials, name: str, upstream: Upstream
                   ) -> tuple[UpstreamIMAP | Failure, bytes, bytes | None]:
    """Connect and log in upstream; the connection is the caller's only on success. A refusal
    comes with the upstream's SASL error challenge, if it sent one. A warm connection the
    upstream dropped before its verdict, or that got a temporary failure, is replaced once by
    a fresh one."""
    try:
        up, reply = await _log_in_upstream(session, creds, name, upstream, warm=True)
    except WarmConnectionLost:
        count_lost(session, "imap", name)
        up, reply = await _log_in_upstream(session, creds, name, upstream, warm=False)
    if reply.status == b"OK":
        return up, reply.text, None
    await up.conn.aclose()
    tempfail = reply.code in _TEMPFAIL_CODES
    return (Failure.AUTH_TEMPFAIL if tempfail else Failure.AUTH_REJECTED), reply.text, \
        up.sasl_challenge


async def _log_in_upstream(session: Session, creds: Credentials, name: str, upstream: Upstream,
                           *, warm: bool) -> tuple[UpstreamIMAP, events.TaggedResponse]:
    timeouts = session.listener.timeouts
    with deadline(timeouts.upstream_connect, "connect") as steps:   # one scope for all steps
        try:
            up = await connect(session, name, upstream, steps, creds, warm=warm)
        except UpstreamError as exc:   # (connect closed it)
            if session.upstream_early and exc.failure is Failure.UPSTREAM:   # greeting: EOF
                raise WarmConnectionLost(exc.detail) from None
            raise
        try:
            steps.step(timeouts.upstream_response, "login")
            reply = await login(session, upstream, up, creds)
            if reply.status == b"OK" and reply.code != b"CAPABILITY":
                await command(up, b"%s CAPABILITY\r\n" % up.next_tag())
            elif up.warm and reply.code in _TEMPFAIL_CODES:
                # maybe a login process of the upstream's previous run (a restart):
                # asked again, once, on a fresh connection
                raise UpstreamError(Failure.UPSTREAM, "temporary failure on a warm connection")
        except UpstreamError as exc:
            await up.conn.aclose()
            if up.warm and exc.failure is Failure.UPSTREAM:   # closed, or BYE, before the verdict
                raise WarmConnectionLost(exc.detail) from None
            raise
        except BaseException:  # refused, broken, or cancelled (login timeout, drain)
            await up.conn.aclose()
            raise
    return up, reply
