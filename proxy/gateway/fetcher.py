"""POP3 -> Store: copy an upstream POP3 mailbox into the gateway's store, safely.

Theory of operation (one `sync_account` call):

    connect (TLS per upstream.pop3.tls) -> greeting -> CAPA -> USER/PASS (or AUTH PLAIN)
    -> UIDL -> diff against store.known_uidls() -> RETR the new ones (pipelined when CAPA says
    PIPELINING) -> ingest_many() every BATCH_MESSAGES / BATCH_BYTES -> retention: DELE -> QUIT

* Nothing lost, nothing twice: a batch is one store transaction, keyed by UIDL. A crash loses at
  most the uncommitted batch, which the next sync fetches again; a committed message is never
  fetched again, even after the IMAP user expunged it.
* DELE is only sent for messages already committed (and fsynced, `store.flush()`), and only per
  `gateway.upstream_retention`: `keep` never sends DELE. DELE takes effect at QUIT (RFC 1939 6,
  UPDATE state), so the store records "deleted upstream" only after QUIT succeeded; if QUIT fails
  the DELEs did not happen and are simply sent again next time.
* A message deleted upstream by someone else stays in the store: the fetcher never removes mail.
* A server without UIDL (-ERR to UIDL): every message is RETR'd each time and de-duplicated by
  content digest, synthetic UIDL "sha256:<hex>". Limitation: two byte-identical messages are one.
* A reply that breaks the protocol, or a RETR cut short, aborts the sync with an `UpstreamError`
  (proxy.session.upstream; its `failure` says why); a partial body is never stored (only complete
  bodies reach a batch).

* Every login syncs: under `keep`, a listing identical to the one the account's last sync left
  entirely stored (`AccountLocks.settled`, by digest) ends the sync at once (QUIT), with no
  store read and no parsing.

The POP3 session itself (connect, TLS, login, framing over the sans-IO `proxy.pop3`) is
`pop3_client.Pop3Client`, the listings and arrival dates are parsed in `pop3_listing.py`; this
module only makes the decisions of a sync.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from .. import logs
from ..config import Config
from ..pop3 import writer
from ..session.failures import Failure
from ..session.routing import log_user
from ..session.upstream import UpstreamError
from ..store import IngestItem, Store
from ._parts import MimeLimits
from .pop3_client import Pop3Client
from .pop3_listing import internaldate, parse_list_listing, parse_uidl_listing, parsed
from .quota import IngestGate, over
from .workers import Workers

__all__ = ["SyncResult", "sync_account", "AccountLocks", "internaldate",
           "parse_uidl_listing", "parse_list_listing"]

BATCH_MESSAGES = 50                 # commit at least every 50 messages ...
BATCH_BYTES = 8 * 1024 * 1024       # ... or 8 MiB of bodies
PIPELINE_WINDOW = 16                # RETR/DELE commands in flight with PIPELINING (RFC 2449 6.6)
DIGEST_PREFIX = "sha256:"

ProgressCallback = Callable[[int, int, int], None]   # (messages done, messages to fetch, bytes)
StoredCallback = Callable[[int], Awaitable[None]]    # (account id): a batch stored new mail


@dataclass(frozen=True, slots=True)
class SyncResult:
    new: int                 # messages stored by this sync
    bytes: int               # their raw size
    deleted_upstream: int    # DELEs that took effect (QUIT succeeded)
    duration: float          # seconds
    skipped: bool = False    # another process sharing the store was fetching this account
    over_quota: int = 0      # new messages left upstream: the account is over gateway.quota


# ---- one fetcher per account ---------------------------------------------------------------------

class AccountLocks:
    """One lock per account, held while it syncs: at most one sync per account among the
    callers that share this object (the gateway service owns one). It also remembers, per
    account, the UIDL listing that its last sync left entirely stored (`settled`): a sync that
    finds the same listing again has nothing to fetch and, under `keep`, nothing to delete, so
    it skips the store's UIDL reads (every login syncs; at 2,000 messages those reads were most
    of a login's store work and of its garbage)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self.settled: dict[tuple[str, str], tuple[int, bytes]] = {}   # -> (account id, digest)

    def lock(self, upstream: str, user: str) -> trio.Lock:
        return self._locks.setdefault((upstream, user), trio.Lock())


# ---- one sync --------------------------------------------------------------------------------------

class _Ingest:
    """Batches complete bodies and commits them in a task of its own, so the store writes one
    batch while the next arrives from the network (one batch committing, one filling: memory is
    bounded by two batches)."""

    def __init__(self, store: Store, account_id: int, progress: ProgressCallback | None, total: int,
                 channel: trio.MemorySendChannel, limits: MimeLimits, gate: IngestGate | None,
                 workers: Workers, on_stored: StoredCallback | None = None):
        self.store, self.account_id, self.progress, self.total = store, account_id, progress, total
        self.on_stored = on_stored
        self.limits, self.gate, self.workers = limits, gate, workers
        self.over_quota = 0
        self.channel = channel
        self.items: list[tuple[str, bytes]] = []   # (uidl, body): analysed off the trio thread
        self.pending_bytes = 0
        self.done = self.new = self.bytes = 0

    async def add(self, uidl: str, body: bytes) -> None:
        if self.gate is not None and not self.gate.admit(len(body)):
            self.over_quota += 1   # not stored, so never DELEd: it waits upstream (RFC 9208 spirit)
            self.done += 1
            return
        self.items.append((uidl, body))
        self.pending_bytes += len(body)
        self.done += 1
        if len(self.items) >= BATCH_MESSAGES or self.pending_bytes >= BATCH_BYTES:
            await self.flush()

    def skip(self) -> None:
        self.done += 1

    async def flush(self) -> None:
        """Hand the batch to the committer (waits while it still commits the previous one)."""
        if self.items:
            batch, self.items, self.pending_bytes = self.items, [], 0
            await self.channel.send(batch)

    async def commit_loop(self, batches: trio.MemoryReceiveChannel) -> None:
        async with batches:
            async for batch in batches:
                # arrival date, MIME analysis, search texts (issue 7) and sort fields
                # (issue 17) once, at ingest, off the trio thread, each bounded by `limits`;
                # shielded so a batch already received is committed, as before the analysis
                with trio.CancelScope(shield=True):
                    items = await self.workers.ingested(analysed, batch, self.limits)
                    uids = await self.store.ingest_many(self.account_id, items)
                before = self.new
                for item, uid in zip(items, uids, strict=True):
                    if uid is not None:
                        self.new += 1
                        self.bytes += len(item.body)
                if self.progress:
                    self.progress(self.done - len(self.items), self.total, self.bytes)
                if self.on_stored is not None and self.new > before:   # e.g. announced to IDLE
                    await self.on_stored(self.account_id)


async def _quota_gate(config: Config, store: Store, account_id: int) -> IngestGate | None:
    """The account's quota as ingest sees it (None: no limit). `full` when not even one byte
    more fits, so the sync can skip RETR altogether."""
    quota = config.gateway.quota if config.gateway is not None else None
    if quota is None or not quota.enabled:
        return None
    gate = IngestGate(quota, await store.usage(account_id))
    gate.full = over(quota, gate.usage, 1, 1)
    return gate


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one real error of a nursery (UpstreamError, StoreError...), not an ExceptionGroup."""
    real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else group


async def _fetch(client: Pop3Client, store: Store, account_id: int,
                 wanted: list[tuple[int, str | None]], known: set[str],
                 progress: ProgressCallback | None, limits: MimeLimits,
                 gate: IngestGate | None, workers: Workers,
                 on_stored: StoredCallback | None = None) -> tuple[_Ingest, dict[str, int]]:
    """RETR and commit `wanted`. On an UpstreamError the complete bodies already received are
    committed before it propagates; a cancelled sync loses at most the uncommitted batches."""
    send, receive = trio.open_memory_channel(0)
    ingest = _Ingest(store, account_id, progress, len(wanted), send, limits, gate, workers, on_stored)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.commit_loop, receive)
            async with send:
                try:
                    digests = await _retrieve(client, wanted, ingest, known)
                finally:
                    await ingest.flush()
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
    return ingest, digests


async def _listing(client: Pop3Client, uidl: bytes | None,
                   workers: Workers) -> list[tuple[int, str | None]]:
    """[(message number, UIDL or None)] from the UIDL listing, or (None: the server has no
    UIDL) from LIST."""
    if uidl is not None:
        return list(await parsed(parse_uidl_listing, uidl, workers))
    logs.event("gateway_fetch_no_uidl", logging.WARNING,
               note="upstream refused UIDL: de-duplicating by sha256 of each message, "
                    "every message is downloaded on every sync")
    listing = await client.multiline(b"LIST")
    if listing is None:
        raise UpstreamError(Failure.UPSTREAM, "LIST refused")
    return [(number, None) for number in await parsed(parse_list_listing, listing, workers)]


async def _retrieve(client: Pop3Client, wanted: list[tuple[int, str | None]], ingest: _Ingest,
                    known: set[str]) -> dict[str, int]:
    """RETR `wanted` (a window of them in flight with PIPELINING); returns digest-UIDL -> number
    for digest mode. Only complete bodies are handed to `ingest`."""
    window = PIPELINE_WINDOW if client.pipelining else 1
    queue = iter(wanted)
    in_flight: list[tuple[int, str | None]] = []
    digests: dict[str, int] = {}

    async def refill() -> None:
        if in_flight and len(in_flight) > window - 4:   # top up in small bursts: fewer writes
            return
        batch = []
        while len(in_flight) < window and (item := next(queue, None)) is not None:
            in_flight.append(item)
            batch.append(writer.command(b"RETR", b"%d" % item[0]))
        if batch:
            await client.send(b"".join(batch), multiline=True, count=len(batch))

    await refill()
    while in_flight:
        number, uidl = in_flight.pop(0)
        line = await client.status(f"RETR {number}")
        if not line.ok:
            logs.event("gateway_fetch_retr_refused", logging.WARNING, msg=number,
                       text=logs.sanitize(line.text))
            ingest.skip()
        else:
            body = await client.body(f"RETR {number}")
            if uidl is None:
                uidl = DIGEST_PREFIX + hashlib.sha256(body).hexdigest()
                digests.setdefault(uidl, number)
            if uidl in known:
                ingest.skip()
            else:
                known.add(uidl)
                await ingest.add(uidl, body)
        await refill()
    return digests


async def _delete(client: Pop3Client, numbers: list[tuple[int, str]]) -> list[str]:
    """DELE each (number, uidl); the UIDLs the server accepted (effective only after QUIT)."""
    accepted = []
    window = PIPELINE_WINDOW if client.pipelining else 1
    for start in range(0, len(numbers), window):
        chunk = numbers[start:start + window]
        await client.send(b"".join(writer.command(b"DELE", b"%d" % n) for n, _ in chunk),
                          count=len(chunk))
        for number, uidl in chunk:
            line = await client.status(f"DELE {number}")
            if line.ok:
                accepted.append(uidl)
            else:
                logs.event("gateway_fetch_dele_refused", logging.WARNING, msg=number,
                           text=logs.sanitize(line.text))
    return accepted


async def _retention(client: Pop3Client, store: Store, account_id: int, seconds: float | None,
                     present: dict[str, int], who: str) -> int:
    """Apply upstream_retention to committed messages, then QUIT. Returns DELEs that took effect."""
    fetched = await store.fetched_at(account_id)
    gone = [uidl for uidl in fetched if uidl not in present]
    if gone:   # deleted upstream by another client: only bookkeeping, the store keeps the mail
        await store.mark_deleted_upstream(account_id, gone)
    if seconds is None:   # keep: never DELE
        await client.quit()
        return 0
    cutoff = time.time() - seconds
    victims = sorted((present[u], u) for u, at in fetched.items() if u in present and at <= cutoff)
    if not victims:
        await client.quit()
        return 0
    await store.flush()   # the store's copy must survive a power loss before the upstream's goes
    accepted = await _delete(client, victims)
    if not await client.quit():
        logs.event("gateway_fetch_dele_not_applied", logging.WARNING, user=who,
                   count=len(accepted))
        return 0
    await store.mark_deleted_upstream(account_id, accepted)
    return len(accepted)


async def _sync_listing(client: Pop3Client, config: Config, store: Store, account_id: int,
                        listing: list[tuple[int, str | None]], has_uidl: bool,
                        progress: ProgressCallback | None, who: str,
                        workers: Workers, on_stored: StoredCallback | None = None
                        ) -> tuple[int, int, int, int]:
    """Fetch what `listing` has and the store does not, then retention and QUIT: (messages
    stored, their bytes, messages left upstream over quota, DELEs that took effect)."""
    known = await store.known_uidls(account_id)
    wanted = [(n, u) for n, u in listing if u is None or u not in known]
    gate = await _quota_gate(config, store, account_id) if wanted else None
    left = wanted if gate is not None and gate.full and has_uidl else []
    if left:   # already full: no RETR at all, it would be thrown away
        wanted = []
    ingest, digests = await _fetch(client, store, account_id, wanted, known, progress,
                                   mime_limits(config), gate, workers, on_stored)
    ingest.over_quota += len(left)
    present = {u: n for n, u in listing if u is not None} if has_uidl else digests
    retention = config.gateway.retention_seconds if config.gateway else None
    deleted = await _retention(client, store, account_id, retention, present, who)
    return ingest.new, ingest.bytes, ingest.over_quota, deleted


async def sync_account(config: Config, store: Store, upstream_name: str, user: str, password: str,
                       *, progress: ProgressCallback | None = None,
                       on_stored: StoredCallback | None = None,
                       locks: AccountLocks | None = None,
                       sasl: tuple[str, bytes] | None = None,
                       workers: Workers | None = None) -> SyncResult:
    """Fetch new messages of `user` from the POP3 side of `upstream_name` into `store`.
    With `sasl` (mechanism, message: an OAuth2-brokered upstream) the login is that SASL
    exchange instead of `password`.

    Args:
        progress: called as `progress(done, total, bytes)` while messages arrive.
        on_stored: awaited with the account id after each batch that stored new mail (the
            gateway announces it to the account's sessions during a long sync).
        workers: the gateway's worker threads (`workers.py`; the service's, shared by every
            account); None: threads of this sync's own.

    Returns:
        What this sync did.

    Raises:
        UpstreamError: connect/TLS/login failed, or the upstream broke the protocol; messages
            committed before the failure stay committed.
        StoreError: the store refused (e.g. StoreKeyError).

    Resource handling: the connection is closed on every path. At most one sync per account runs
    among the callers sharing `locks`; a second caller waits for the first. Across processes
    sharing the store (PostgreSQL replicas), the store's fetch lease allows one: when another
    process holds it, this sync does nothing (`skipped`); what that one stores reaches this
    process through the store's change feed.
    """
    upstream = config.upstreams.get(upstream_name)
    if upstream is None:
        raise UpstreamError(Failure.INTERNAL,
                            f"unknown upstream {logs.sanitize(upstream_name)!r}")
    retention = config.gateway.retention_seconds if config.gateway else None
    who = log_user(config.logging, user)
    locks = locks or AccountLocks()
    workers = workers if workers is not None else Workers.build()
    async with locks.lock(upstream_name, user), store.fetch_lease(upstream_name, user) as mine:
        started = time.monotonic()
        if not mine:
            logs.event("gateway_sync_skipped", user=who, upstream=upstream_name,
                       reason="another process is fetching this account")
            return SyncResult(0, 0, 0, time.monotonic() - started, skipped=True)
        client = await Pop3Client.connect(upstream)
        try:
            if sasl is not None:   # an OAuth2-brokered upstream: (mechanism, message)
                await client.login_token(*sasl)
            else:
                await client.login(user, password)
            # only now: a user the upstream refuses leaves no account behind
            account = await store.ensure_account(upstream_name, user)
            uidl = await client.multiline(b"UIDL")
            has_uidl = uidl is not None
            # `keep` and the listing its last sync left entirely stored: nothing to do
            settled = None if uidl is None or retention is not None else (
                account.id, hashlib.sha256(uidl).digest())
            if settled is not None and locks.settled.get((upstream_name, user)) == settled:
                await client.quit()
                new = stored = over_quota = deleted = 0
            else:
                locks.settled.pop((upstream_name, user), None)
                listing = await _listing(client, uidl, workers)
                new, stored, over_quota, deleted = await _sync_listing(
                    client, config, store, account.id, listing, has_uidl, progress, who, workers,
                    on_stored)
                if settled is not None and not over_quota:
                    locks.settled[(upstream_name, user)] = settled
        except UpstreamError as exc:
            logs.event("gateway_sync_failed", logging.WARNING, user=who,
                       upstream=upstream_name, reason=exc.failure.label, detail=exc.detail)
            raise
        finally:
            await client.aclose()
    result = SyncResult(new, stored, deleted, time.monotonic() - started, over_quota=over_quota)
    if result.over_quota:
        logs.event("gateway_sync_over_quota", logging.WARNING, user=who, upstream=upstream_name,
                   kept_upstream=result.over_quota)
    logs.event("gateway_sync_done", user=who, upstream=upstream_name,
               mode="uidl" if has_uidl else "digest", new=result.new, bytes=result.bytes,
               deleted_upstream=result.deleted_upstream, duration=round(result.duration, 3))
    return result


def analysed(batch: list[tuple[str, bytes]], limits: MimeLimits) -> list[IngestItem]:
    """(uidl, body) -> IngestItem with its arrival date, cache blob
    (`analysis.analyze_for_store`) and sort-fields record (`sortkeys.extract_record`): the
    work that grows with a message, run in a worker thread, each part bounded by `limits`
    (a 50 MB header line is read up to `max_header_bytes`, as Dovecot reads it)."""
    from .analysis import analyze_for_store
    from .sortkeys import extract_record

    return [IngestItem(uidl, body, internaldate(body, limits.max_header_bytes),
                       cache=analyze_for_store(body, limits),
                       sort_fields=extract_record(body, limits.max_header_bytes))
            for uidl, body in batch]


def mime_limits(config: Config) -> MimeLimits:
    """The MIME scanner's bounds from `gateway.limits` (defaults without a gateway section)."""
    if config.gateway is None:
        return MimeLimits()
    limits = config.gateway.limits
    return MimeLimits(limits.mime_max_depth, limits.mime_max_parts, limits.mime_max_header_bytes)
