"""One account's background fetcher: the gateway service keeps one `AccountFetcher` per account
and syncs it over POP3 at login (`kick`, which the login waits for) and every
`gateway.poll_interval` while the account has sessions (or always, with `background_poll`).
After a sync that stored new mail it publishes the new INBOX tail on the account's hub, so IDLE
sessions see it at once; during a long sync (a large first one, which a login stops waiting for
after `gateway.login_sync_wait`) it also publishes after a committed batch (`ingest_batches.BATCH_*`),
at most every `ANNOUNCE_DURING_SYNC_S`, so the mailbox grows in steps, not in one jump at the
end (each step a snapshot's tail: UIDs ascending, the same EXISTS path as any new mail).
A failed sync is counted, logged and recorded on the account's row (`gateway accounts`), and
retried at the next poll; a bug in one account's sync is logged and never stops the process.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from .. import logs
from ..config import Config, OAuth2
from ..oauth2 import Broker, BrokerUnavailable, NotEnrolled, RefreshRefused
from ..session.failures import Failure
from ..session.routing import log_user
from ..session.upstream import UpstreamError
from ..store import StoreError, acting_for
from .fetcher import sync_account

if TYPE_CHECKING:
    from .service import GatewayService

ANNOUNCE_DURING_SYNC_S = 1.0   # at most one announcement of stored mail per this, during a sync


class AccountFetcher:
    """Syncs one account while it has sessions: at login (`kick`) and every poll_interval."""

    def __init__(self, service: GatewayService, upstream: str, user: str):
        self.service, self.upstream, self.user = service, upstream, user
        self.sessions = 0
        self.background = False        # gateway.background_poll: keep polling without sessions
        self.password = ""
        self.account_id: int | None = None   # known after a login: its syncs use its share
        self._token: tuple[Broker, str] | None = None   # the access token of the last sync
        self.running = False
        self.last_success: float | None = None   # Unix time of the last successful sync
        self._kick = trio.Event()
        # set when the next sync attempt to *start* has ended (swapped at each start), so a
        # login that kicks during a sync in flight waits for one that began after its kick
        self.synced = trio.Event()
        self._announced_at = -float("inf")   # trio time of the last announcement during a sync

    async def _sasl(self) -> tuple[str, bytes] | None:
        """For an OAuth2-brokered upstream (proxy/oauth2): the SASL mechanism and message with
        the user's access token. Raises NotEnrolled, RefreshRefused, BrokerUnavailable."""
        settings = oauth2_settings(self.service.config, self.upstream)
        if settings is None:
            return None
        broker = self.service.oauth2.get(settings)
        token = await broker.access_token(self.user)
        self._token = (broker, token)
        return broker.mechanism, broker.message(self.user, token)

    def kick(self) -> None:
        self._kick.set()
        if not self.running:
            self.running = True
            self.service.nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            while self.sessions > 0 or self.background:
                self._kick = trio.Event()
                if self.account_id is None:
                    await self._sync_once()
                else:   # the account's share of the store's connections (store/fairness.py)
                    with acting_for(self.account_id):
                        await self._sync_once()
                with trio.move_on_after(self.service.settings.poll_interval):
                    await self._kick.wait()
        finally:
            self.running = False
            if not self.background:
                self.password = ""

    async def _sync_once(self) -> None:
        service = self.service
        metrics = service.metrics
        done, self.synced = self.synced, trio.Event()
        try:
            sasl = await self._sasl()
            result = await sync_account(service.config, service.store, self.upstream, self.user,
                                        self.password, locks=service.sync_locks, sasl=sasl,
                                        workers=service.mime.workers, on_stored=self._stored)
            self.last_success = time.time()
            # a sync cut by gateway.limits.sync_budget stored what it fetched, but is not done
            metrics.gateway_syncs.labels("budget_spent" if result.budget_spent else "ok").inc()
            metrics.gateway_sync_duration.observe(result.duration)
            metrics.gateway_ingested_messages.inc(result.new)
            metrics.gateway_ingested_bytes.inc(result.bytes)
            metrics.gateway_upstream_deletes.inc(result.deleted_upstream)
            metrics.gateway_over_quota.inc(result.over_quota)
            for kind, count in result.anomalies.items():
                metrics.gateway_upstream_anomalies.labels(kind).inc(count)
            metrics.gateway_store_size.set(await service.store.size_bytes())
            account = await service.store.ensure_account(self.upstream, self.user)
            await service.store.record_sync(account.id, None)
            if result.new:
                await self._announce(account)
        except (UpstreamError, StoreError, NotEnrolled, RefreshRefused, BrokerUnavailable) as exc:
            # logged by the fetcher (or here); retried next poll
            reason = exc.failure.label if isinstance(exc, UpstreamError) else \
                "store" if isinstance(exc, StoreError) else \
                "auth_tempfail" if isinstance(exc, BrokerUnavailable) else "auth_rejected"
            if isinstance(exc, UpstreamError) and exc.failure is Failure.AUTH_REJECTED \
                    and self._token is not None:   # a cached token refused: refresh next time
                self._token[0].forget(self.user, self._token[1])
            metrics.gateway_syncs.labels(reason).inc()
            metrics.gateway_ingest_errors.labels(reason).inc()
            logs.event("gateway_poll_failed", logging.WARNING, upstream=self.upstream,
                       user=log_user(service.config.logging, self.user),
                       error=logs.sanitize(str(exc)))
            if not isinstance(exc, StoreError):   # a store that failed cannot record it: the
                # log line above says so, and waiting on it again would delay this sync's end
                message = logs.sanitize(str(exc))   # an UpstreamError names its failure already
                await self._record_failure(
                    message if message.startswith(f"{reason}:") else f"{reason}: {message}")
        except Exception:  # a bug in one account's sync must not stop the process
            metrics.gateway_syncs.labels("internal").inc()
            metrics.gateway_ingest_errors.labels("internal").inc()
            logs.event("gateway_poll_failed", logging.ERROR, exc_info=True, upstream=self.upstream,
                       user=log_user(service.config.logging, self.user))
        finally:
            done.set()

    async def _stored(self, account_id: int) -> None:
        """A batch of the sync in flight stored new mail: announce it, at most every
        ANNOUNCE_DURING_SYNC_S (the sync's end announces the rest). A store error here is the
        announcement's, not the sync's: logged, and the sync goes on (its end announces)."""
        now = trio.current_time()
        if now - self._announced_at >= ANNOUNCE_DURING_SYNC_S:
            self._announced_at = now
            try:
                await self._announce(
                    await self.service.store.ensure_account(self.upstream, self.user))
            except StoreError as exc:   # the mail is stored: a failed read only delays the news
                logs.event("gateway_announce_failed", logging.WARNING, upstream=self.upstream,
                           user=log_user(self.service.config.logging, self.user),
                           error=logs.sanitize(str(exc)))

    async def _announce(self, account) -> None:
        """Publish the new tail of the account's INBOX on its hub (sessions see EXISTS)."""
        service = self.service
        inbox = await service.store.get_mailbox(account.id, "INBOX")
        if inbox is not None:
            backend = service.backend(account)
            await backend.hub.announce_latest(backend.index, service.store, inbox.id)

    async def _record_failure(self, error: str) -> None:
        """Kept on the account's row for `gateway accounts`; a user the upstream never accepted
        has no row and gets none."""
        store = self.service.store
        try:
            account = await store.get_account(self.upstream, self.user)
            if account is not None:
                await store.record_sync(account.id, error)
        except StoreError as exc:   # the store is what failed: the log line above says so
            logs.event("gateway_sync_status_not_saved", logging.WARNING, upstream=self.upstream,
                       user=log_user(self.service.config.logging, self.user),
                       error=logs.sanitize(str(exc)))



def oauth2_settings(config: Config, upstream: str) -> OAuth2 | None:
    """The upstream's brokered OAuth2 settings (proxy/oauth2), None for a password upstream."""
    up = config.upstreams.get(upstream)
    return None if up is None or up.auth is None else up.auth.oauth2
