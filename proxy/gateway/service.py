"""The gateway service: IMAP clients served from the store, filled from POP3 upstreams.

Theory of operation
-------------------
One `GatewayService` per process (`async with open_gateway(config, metrics) as service`) owns
the store, one notification `Hub` per account, the MIME/body caches, the login checker and one
`AccountFetcher` per account (account_fetcher.py). `handle(session, conn)` runs one client connection:

    greeting + pre-login dialogue (session.ImapFront, as for the relay: CAPABILITY, ID,
    STARTTLS, LOGIN, AUTHENTICATE PLAIN/LOGIN, budgets, login timeout)
    -> session.login.log_in (routing, auth-failure throttling, auth metrics, as for the relay)
       with the password checked against the route's POP3 upstream (auth.Authenticator)
    -> the account's fetcher syncs once (the login waits for it, at most
       `gateway.login_sync_wait`; metric mailproxy_gateway_login_syncs_total)
    -> imapd.ImapSession until LOGOUT/EOF/drain

While at least one session of an account is open (always, with `gateway.background_poll`, for
accounts whose password is stored encrypted: that needs `gateway.key_file`), its fetcher syncs every
`gateway.poll_interval` (one fetcher per account; `fetcher.sync_account` also holds a per-account
lock, `AccountLocks`). After a sync that stored new mail, it publishes the new INBOX tail on the
account's hub, so IDLE sessions see it at once. The password is kept in memory only while sessions are open.

Several processes on one PostgreSQL store: the store's change feed (`follow_changes`, LISTEN/
NOTIFY + the change log) hands every change another process made to `changed`, which
publishes it on the account's hub like a local one (new messages as the index's fresh tail,
flags re-read, expunges as UIDs); `gone` disconnects the sessions of a mailbox deleted or
renamed elsewhere; `hold` and `pinned` keep the bodies of expunged messages that sessions still
show (RFC 2180 4.1.1) from being collected by any replica. That is the whole interface between
the hub and the other replicas.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from .. import logs
from ..config import Config, Gateway, Upstream
from ..imap import writer
from ..metrics import Metrics
from ..net.conn import Conn
from ..oauth2 import Brokers
from ..routing.answers import Refusal
from ..session.context import CloseSession, Session
from ..session.failures import Failure
from ..session.imap_front import ImapFront, LoginRequest
from ..session.login import Attempt, log_in
from ..session.sasl import Credentials
from ..store import (
    Account,
    Change,
    ChangeKind,
    FlagUpdate,
    Store,
    StoreError,
    acting_for,
    load_key_ring,
    open_store,
)
from .account_fetcher import AccountFetcher, oauth2_settings
from .account_locks import AccountLocks
from .auth import Authenticator
from .fetcher import reply_limits
from .imapd import CAPABILITIES, Backend, BodyCache, Hub, ImapSession, MimeCache
from .ingest_batches import mime_limits
from .users import canonical_user
from .workers import Workers

# COMPRESS only once logged in (as Dovecot): the pre-login front does not compress (RFC 4978).
PRELOGIN_CAPABILITIES = tuple(c for c in CAPABILITIES if c != b"COMPRESS=DEFLATE")


class GatewayService:
    """See the module docstring. Create with `open_gateway`."""

    def __init__(self, config: Config, metrics: Metrics, store: Store, nursery: trio.Nursery,
                 oauth2: Brokers | None = None):
        if config.gateway is None:
            raise ValueError("config has no gateway section")
        self.config, self.metrics, self.store, self.nursery = config, metrics, store, nursery
        self.oauth2 = oauth2 if oauth2 is not None else Brokers(metrics)
        self.settings: Gateway = config.gateway
        self.auth = Authenticator(self.settings.auth_cache_ttl, reply_limits(config))
        limits = self.settings.limits
        self.mime = MimeCache(BodyCache(), limits=mime_limits(config),
                              workers=Workers.build(limits.command_threads, limits.ingest_threads))
        self._backends: dict[int, Backend] = {}
        self._fetchers: dict[tuple[str, str], AccountFetcher] = {}
        self.sync_locks = AccountLocks()
        metrics.publish_sync_ages(lambda: [f.last_success for f in self._fetchers.values()],
                                  time.time)

    def backend(self, account: Account) -> Backend:
        backend = self._backends.get(account.id)
        if backend is None:
            hub = Hub(self.settings.change_log_keep)
            backend = self._backends[account.id] = Backend(self.store, hub, self.mime, self.metrics)
        return backend

    # ---- the store's change feed (PostgreSQL: other replicas; proxy/store/_pg_notify.Feed) ----
    async def changed(self, account_id: int, mailbox_id: int, changes: list[Change],
                      flags: dict[int, tuple[frozenset[str], int]]) -> None:
        """Changes another process made: publish them on the account's hub as if made here
        (`flags`: uid -> current flags and MODSEQ of the messages with a FLAGS change, read
        with the log). Nothing to do when no session of the account is open in this process."""
        backend = self._backends.get(account_id)
        if backend is None:
            return
        hub, store = backend.hub, self.store
        try:
            for kind, uids in _runs(changes):
                if kind is ChangeKind.APPEND:
                    await hub.announce_latest(backend.index, store, mailbox_id)
                elif kind is ChangeKind.FLAGS:
                    hub.flags(mailbox_id, [FlagUpdate(uid, *flags[uid], True)
                                           for uid in dict.fromkeys(uids) if uid in flags])
                else:
                    hub.expunged(mailbox_id, uids)
        except StoreError as exc:   # the next change (or the sessions' own commands) catches up
            logs.event("gateway_external_change_failed", logging.WARNING,
                       error=logs.sanitize(str(exc)))

    def hold(self, account_id: int, mailbox_id: int, uids: list[int]) -> None:
        """Expunges made here, read back from the log: views pin what they still show."""
        backend = self._backends.get(account_id)
        if backend is not None:
            backend.hub.hold(mailbox_id, uids)

    def gone(self, account_id: int, mailbox_id: int) -> None:
        """A mailbox deleted or renamed by another process: its sessions are disconnected."""
        backend = self._backends.get(account_id)
        if backend is not None:
            backend.index.forget(mailbox_id)
            backend.hub.gone(mailbox_id)

    def pinned(self) -> set[int]:
        """Bodies of expunged messages that sessions of this process still show."""
        return set().union(*(backend.hub.pinned() for backend in self._backends.values()))

    def fetcher(self, upstream: str, user: str) -> AccountFetcher:
        key = (upstream, user)
        if key not in self._fetchers:
            self._fetchers[key] = AccountFetcher(self, upstream, user)
        return self._fetchers[key]

    async def handle(self, session: Session, conn: Conn) -> None:
        """Run one client connection to its end. Never raises for anything the client or the
        upstream does; the caller closes `conn` and logs the session end."""
        front = ImapFront(session, conn, PRELOGIN_CAPABILITIES)
        login: tuple[Account, AccountFetcher] | None = None
        try:
            while True:
                login = await front.until_logged_in(
                    functools.partial(self._login, session, front), self._release)
                if login is None:
                    return
                account, fetcher = login
                imap = ImapSession(session, conn, self.backend(account), account,
                                   front.take_unconsumed())
                with acting_for(account.id):   # its share of the store's connections
                    if not await imap.run():
                        return
                login = None   # UNAUTHENTICATE (RFC 8437): the account is released, log in again
                self._detach(fetcher)
                front = ImapFront(session, conn, PRELOGIN_CAPABILITIES,
                                  again=imap.take_unconsumed())
        except CloseSession as exc:
            session.end(exc.reason)
        finally:
            if login is not None:
                self._detach(login[1])

    async def _release(self, login: tuple[Account, AccountFetcher]) -> None:
        self._detach(login[1])

    async def _check(self, session: Session, creds: Credentials, name: str,
                     upstream: Upstream) -> tuple[str | Failure, bytes]:
        """The gateway's login Attempt: the password against the route's POP3 server."""
        if upstream.pop3 is None:
            return Failure.AUTH_REJECTED, b"route has no pop3 upstream"
        failure = await self.auth.verify(name, upstream, creds.user, creds.password,
                                         creds.mechanism)
        return (name if failure is None else failure), b""

    async def _login(self, session: Session, front: ImapFront) -> tuple[Account, AccountFetcher]:
        attempt = Attempt("imap", "gateway", self._check)
        while True:
            request: LoginRequest = await front.next_login()
            creds = request.credentials
            creds = dataclasses.replace(   # case variants of a name are one account
                creds, user=canonical_user(creds.user, self.settings.user_case))
            outcome = await log_in(session, creds, attempt)
            if isinstance(outcome, Refusal):
                await front.auth_refused(request.tag, outcome)
                continue
            if not isinstance(outcome, Failure):
                try:
                    account = await self.store.ensure_account(outcome, creds.user)
                    break
                except StoreError as exc:   # e.g. the database restarting: try again later
                    logs.event("gateway_store_unavailable", logging.WARNING,
                               **session.log_fields(), error=logs.sanitize(str(exc)))
                    outcome = Failure.AUTH_TEMPFAIL
            await front.auth_failed(request.tag, outcome)
        upstream_name = outcome
        fetcher = self.fetcher(upstream_name, creds.user)
        brokered = oauth2_settings(self.config, upstream_name) is not None   # the token file instead
        password = b"" if brokered else creds.password
        fetcher.sessions += 1
        fetcher.account_id = account.id
        fetcher.password = password.decode("utf-8")
        self._gauge(+1)
        try:
            if self.settings.background_poll and self.store.can_store_credentials:
                await self.store.save_credentials(account.id, password)
                fetcher.background = True
            synced = fetcher.synced
            fetcher.kick()
            # so that the first SELECT shows the mailbox; a login answered before the sync ends
            # sees what is stored so far, and the rest as EXISTS once the sync has stored it
            with trio.move_on_after(self.settings.login_sync_wait):
                await synced.wait()
            self.metrics.gateway_login_syncs.labels(
                "synced" if synced.is_set() else "pending").inc()
            caps = b"CAPABILITY " + b" ".join(CAPABILITIES)
            await front.logged_in(writer.tagged(request.tag, b"OK", b"Logged in.", caps))
        except BaseException:  # cancelled or refused before the session owns the login
            self._detach(fetcher)
            raise
        return account, fetcher

    async def poll_in_background(self) -> None:
        """gateway.background_poll: keep every account with stored (encrypted) credentials
        polled, sessions or not. Accounts appear here after their first login."""
        if not self.store.can_store_credentials:
            logs.event("gateway_background_poll_disabled", logging.WARNING,
                       reason="background_poll needs gateway.key_file to store credentials")
            return
        for account in await self.store.accounts_with_credentials():
            password = await self.store.load_credentials(account.id)
            if password is None or account.upstream not in self.config.upstreams:
                continue
            fetcher = self.fetcher(account.upstream, account.user)
            fetcher.password = password.decode("utf-8")
            fetcher.background = True
            fetcher.kick()

    def _detach(self, fetcher: AccountFetcher) -> None:
        fetcher.sessions -= 1
        self._gauge(-1)

    def _gauge(self, delta: int) -> None:
        self.metrics.gateway_sessions.inc(delta)


def _runs(changes: list[Change]) -> list[tuple[ChangeKind, list[int]]]:
    """Consecutive changes of one kind grouped, in order: [(kind, uids), ...]."""
    runs: list[tuple[ChangeKind, list[int]]] = []
    for change in changes:
        if runs and runs[-1][0] is change.kind:
            runs[-1][1].append(change.uid)
        else:
            runs.append((change.kind, [change.uid]))
    return runs


async def open_configured_store(gateway: Gateway) -> Store:
    """The store of a `gateway:` config section (URL or path, key ring, password, pool size)."""
    password = None if gateway.store_password is None else gateway.store_password.value.decode()
    return await open_store(gateway.store, load_key_ring(gateway.key_file), password=password,
                            pool_size=gateway.store_pool_size,
                            ack_interval=gateway.store_ack_interval,
                            replica_lease=gateway.store_replica_lease,
                            pool_per_account=gateway.store_pool_per_account,
                            query_timeout=gateway.store_query_timeout)


@asynccontextmanager
async def open_gateway(config: Config, metrics: Metrics,
                       oauth2: Brokers | None = None) -> AsyncIterator[GatewayService]:
    """Open the store (`gateway.store`, key ring from `gateway.key_file`) and run the service's
    background tasks until the block ends; the store is closed on every path.

    Raises:
        StoreError / StoreKeyError: the store cannot be opened.
    """
    if config.gateway is None:
        raise ValueError("config has no gateway section")
    store = await open_configured_store(config.gateway)
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                service = GatewayService(config, metrics, store, nursery, oauth2)
                follow = getattr(store, "follow_changes", None)   # PostgreSQL: other replicas
                if follow is not None:   # registered as a replica before serving (_pg_bodies)
                    await nursery.start(follow, service)
                if config.gateway.background_poll:
                    nursery.start_soon(service.poll_in_background)
                yield service
            except BaseException as exc:   # re-raised bare below, not wrapped in a group
                error = exc
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
    if error is not None:
        raise error
