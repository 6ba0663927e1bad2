"""One IMAP relay session: greeting and login answered locally, upstream login, then relay."""

from __future__ import annotations

from functools import partial

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
from .engine_login import DecidedLogin, ImapEngineLogin
from .engine_login_task import run_from_greeting, taken_back
from .imap_login_machine import failure_of
from .imap_relay import ImapRelay
from .imap_upstream import UpstreamIMAP, connect, login, relayable
from .relay_session import RelayLogin, closed_on_failure, connected, run_session, warm_or_fresh


async def handle(session: Session, conn: Conn) -> None:
    """Run the session to its end. Never raises for anything the peers do. The relay engine
    runs it from the greeting when it can (engine_login.py), and trio from where it stops."""
    front = ImapFront(session, conn)
    ended, pending = await run_from_greeting(front)
    if not ended:
        await run_session(session, front, partial(_authenticate, pending=pending), ImapRelay,
                          begin_early=not front.greeted)   # (greeted: by the engine)


async def resume(front: ImapFront, sess: ImapEngineLogin) -> None:
    """Go on with a session the relay engine accepted and ran (engine_accept.py) from where it
    released it."""
    ended, pending = await taken_back(front, sess)
    if not ended:
        await run_session(front.session, front, partial(_authenticate, pending=pending),
                          ImapRelay, begin_early=False)   # (begun at the engine's accept)


async def _authenticate(session: Session, front: ImapFront, pending: object = None
                        ) -> UpstreamIMAP:
    while True:
        if isinstance(pending, DecidedLogin):   # asked by the engine: its outcome goes on here
            front.login_read(pending.cmd.name, pending.started)
            request, attempt = pending.request, RelayLogin("imap", pending.attempt)
        else:
            request = await front.next_login(pending)
            attempt = RelayLogin("imap", _attempt)
        pending = None
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
    up, reply = await warm_or_fresh(session, "imap", name, lambda warm: _log_in_upstream(
        session, creds, name, upstream, warm=warm))
    if reply.status == b"OK":
        return up, reply.text, None
    await up.conn.aclose()
    failure = failure_of(reply)
    assert failure is not None
    return failure, reply.text, up.sasl_challenge


async def _log_in_upstream(session: Session, creds: Credentials, name: str, upstream: Upstream,
                           *, warm: bool) -> tuple[UpstreamIMAP, events.TaggedResponse]:
    timeouts = session.listener.timeouts
    with deadline(timeouts.upstream_connect, "connect") as steps:   # one scope for all steps
        up = await connected(session, connect(session, name, upstream, steps, creds, warm=warm))
        async with closed_on_failure(up, up.warm):
            steps.step(timeouts.upstream_response, "login")
            reply = await login(session, upstream, up, creds)   # (an OK: capabilities known)
            if up.warm and failure_of(reply) is Failure.AUTH_TEMPFAIL:
                # maybe a login process of the upstream's previous run (a restart):
                # asked again, once, on a fresh connection
                raise UpstreamError(Failure.UPSTREAM, "temporary failure on a warm connection")
    return up, reply
