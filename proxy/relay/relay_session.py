"""What an IMAP and a POP3 relay session share: the session's course and the upstream login.

A relay session (imap_session.py, pop3_session.py) is: the pre-login front answers the client
until a login succeeds at the upstream (`Front.until_logged_in`), then the protocol's relay runs
over both connections; the upstream connection is closed whatever happens, and a CloseSession
raised anywhere ends the session with its reason. `RelayLogin` is the login attempt both make
per client login: the protocol's own dialogue (`attempt`) returns the upstream, or the Failure,
with the upstream's reply text and its SASL error challenge to a refused token login (RFC 7628
3.2.2, RFC 5034 4), kept for the session to relay to the client before its NO / -ERR.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from ..config import Upstream
from ..net.conn import Conn
from ..session import connect_early
from ..session.context import CloseSession, Session
from ..session.failures import Failure
from ..session.front import Front
from ..session.login import Attempt
from ..session.sasl import Credentials
from ..session.upstream import UpstreamError
from ..session.warm_pool import WarmConnectionLost

__all__ = ["RelayLogin", "closed_on_failure", "connected", "release_early", "run_session",
           "warm_or_fresh"]


class _Upstream(Protocol):
    @property
    def conn(self) -> Conn: ...


class _Relay(Protocol):
    async def run(self) -> None: ...


U = TypeVar("U", bound=_Upstream)
F = TypeVar("F", bound=Front)
T = TypeVar("T")


async def run_session(session: Session, front: F, authenticate: Callable[[Session, F], Awaitable[U]],
                      relay: Callable[[Session, Conn, bytes, U], _Relay], *,
                      begin_early: bool = True) -> None:
    """Run a relay session to its end. Never raises for anything the peers do. Only this frame
    holds `front` (pass it in the call), so it is let go once the relay starts. `begin_early`:
    start the `connect_early` connect here (False: the relay engine began the session and did,
    engine_login_task.py)."""
    upstream: U | None = None
    target = session.runtime.early_targets.get(session.protocol)
    if target is not None and begin_early:   # the upstream's accept and greeting meanwhile
        session.early = connect_early.start(target)
    try:
        upstream = await front.until_logged_in(lambda: authenticate(session, front), _close)
        if upstream is not None:
            running = relay(session, front.conn, front.take_unconsumed(), upstream)
            del front  # its parser and meter are done: an IDLE session holds only the relay's
            await running.run()
    except CloseSession as exc:
        session.end(exc.reason)
    finally:
        release_early(session)
        if upstream is not None:
            await upstream.conn.aclose()


def release_early(session: Session) -> None:
    """Close the connection begun at accept (`connect_early`) that no login took."""
    early, session.early = session.early, None
    if early is not None:
        connect_early.discard(early)
        metrics = session.runtime.metrics
        metrics.child(metrics.upstream_early, early.name, session.protocol, "unused").inc()


async def warm_or_fresh(session: Session, protocol: str, name: str,
                        log_in: Callable[[bool], Awaitable[T]]) -> T:
    """`log_in(True)` on a warm or early connection; if it was dropped before the login's
    verdict (`WarmConnectionLost`), counted and retried once on a fresh one: `log_in(False)`."""
    try:
        return await log_in(True)
    except WarmConnectionLost:
        if session.upstream_early:
            session.upstream_early = False
            metrics = session.runtime.metrics
            metrics.child(metrics.upstream_early, name, protocol, "lost").inc()
        else:
            session.runtime.warm_pools.lost(protocol, name)
        return await log_in(False)


async def connected(session: Session, connecting: Awaitable[T]) -> T:
    """The upstream `connecting` gives; an early connection that met EOF before its greeting
    raises `WarmConnectionLost` (the connector has closed it)."""
    try:
        return await connecting
    except UpstreamError as exc:
        if session.upstream_early and exc.failure is Failure.UPSTREAM:
            raise WarmConnectionLost(exc.detail) from None
        raise


@asynccontextmanager
async def closed_on_failure(up: _Upstream, warm: bool) -> AsyncIterator[None]:
    """Close `up` when the block fails (refused, broken, cancelled: login timeout, drain); a warm
    or early connection closed, or BYE, before the login's verdict raises `WarmConnectionLost`."""
    try:
        yield
    except UpstreamError as exc:
        await up.conn.aclose()
        if warm and exc.failure is Failure.UPSTREAM:
            raise WarmConnectionLost(exc.detail) from None
        raise
    except BaseException:
        await up.conn.aclose()
        raise


async def _close(upstream: _Upstream) -> None:
    await upstream.conn.aclose()


class RelayLogin(Attempt[U]):
    """One login at the upstream (per client login); `challenge` as in the module docstring."""

    def __init__(self, protocol: str, attempt: Callable[
            [Session, Credentials, str, Upstream],
            Awaitable[tuple[U | Failure, bytes, bytes | None]]]) -> None:
        super().__init__(protocol, "relay", self._run)
        self._attempt = attempt
        self.challenge: bytes | None = None

    async def _run(self, session: Session, creds: Credentials, name: str,
                   upstream: Upstream) -> tuple[U | Failure, bytes]:
        outcome, text, self.challenge = await self._attempt(session, creds, name, upstream)
        return outcome, text
