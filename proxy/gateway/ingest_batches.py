"""A sync's store side: complete bodies batched, analysed off the trio thread and committed.

Theory of operation: the fetcher hands each complete body to `Ingest.add`; a batch is handed
on every BATCH_MESSAGES messages or BATCH_BYTES of bodies, and `Ingest.commit_loop`, a task of
its own, analyses it in a worker thread (`analysed`: arrival date, MIME cache and search texts,
sort fields, each bounded by `MimeLimits`) and commits it as one store transaction
(`store.ingest_many`, keyed by UIDL: nothing lost, nothing twice). One batch commits while the
next fills, so memory is bounded by two batches. The account's quota (`quota_gate`) is applied
as bodies arrive: a message that does not fit is left upstream, never stored, never deleted.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio

from ..config import Config
from ..store import IngestItem, Store
from ._parts import MimeLimits
from .pop3_listing import internaldate
from .quota import IngestGate, over
from .sync_identity import message_digest
from .workers import Workers

__all__ = ["BATCH_MESSAGES", "BATCH_BYTES", "Ingest", "ProgressCallback", "StoredCallback",
           "analysed", "mime_limits", "quota_gate"]

BATCH_MESSAGES = 50                 # commit at least every 50 messages ...
BATCH_BYTES = 8 * 1024 * 1024       # ... or 8 MiB of bodies

ProgressCallback = Callable[[int, int, int], None]   # (messages done, messages to fetch, bytes)
StoredCallback = Callable[[int], Awaitable[None]]    # (account id): a batch stored new mail


class Ingest:
    """Batches complete bodies and commits them in a task of its own, so the store writes one
    batch while the next arrives from the network (one batch committing, one filling: memory is
    bounded by two batches)."""

    def __init__(self, store: Store, account_id: int, progress: ProgressCallback | None, total: int,
                 channel: trio.MemorySendChannel, limits: MimeLimits, gate: IngestGate | None,
                 workers: Workers, on_stored: StoredCallback | None = None,
                 digest_key: bytes = b""):
        self.store, self.account_id, self.progress, self.total = store, account_id, progress, total
        self.on_stored = on_stored
        self.limits, self.gate, self.workers = limits, gate, workers
        self.digest_key = digest_key   # each stored message's digest (`sync_identity`)
        self.over_quota = 0
        self.skipped: dict[str, int] = {}   # messages left upstream this sync, by reason
        self.channel = channel
        # (uidl, body, digest or None: not taken yet, reused): analysed off the trio thread
        self.items: list[tuple[str, bytes, bytes | None, bool]] = []
        self.pending_bytes = 0
        self.done = self.new = self.bytes = 0

    async def add(self, uidl: str, body: bytes, digest: bytes | None = None,
                  reused: bool = False) -> None:
        if self.gate is not None and not self.gate.admit(len(body)):
            self.over_quota += 1   # not stored, so never DELEd: it waits upstream (RFC 9208 spirit)
            self.done += 1
            return
        self.items.append((uidl, body, digest, reused))
        self.pending_bytes += len(body)
        self.done += 1
        if len(self.items) >= BATCH_MESSAGES or self.pending_bytes >= BATCH_BYTES:
            await self.flush()

    def skip(self, reason: str | None = None) -> None:
        """A message not stored: known already (no reason), or left upstream (`reason`:
        retr_refused, too_big), counted for the sync's result and its metric."""
        self.done += 1
        if reason is not None:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

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
                    items = await self.workers.ingested(analysed, batch, self.limits,
                                                        self.digest_key)
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


async def quota_gate(config: Config, store: Store, account_id: int) -> IngestGate | None:
    """The account's quota as ingest sees it (None: no limit). `full` when not even one byte
    more fits, so the sync can skip RETR altogether."""
    quota = config.gateway.quota if config.gateway is not None else None
    if quota is None or not quota.enabled:
        return None
    gate = IngestGate(quota, await store.usage(account_id))
    gate.full = over(quota, gate.usage, 1, 1)
    return gate


def analysed(batch: list[tuple[str, bytes, bytes | None, bool]], limits: MimeLimits,
             digest_key: bytes) -> list[IngestItem]:
    """(uidl, body, digest, reused) -> IngestItem with its arrival date, cache blob
    (`analysis.analyze_for_store`), sort-fields record (`sortkeys.extract_record`) and content
    digest (`sync_identity`, when the fetcher did not take it already): the
    work that grows with a message, run in a worker thread, each part bounded by `limits`
    (a 50 MB header line is read up to `max_header_bytes`, as Dovecot reads it)."""
    from .analysis import analyze_for_store
    from .sortkeys import extract_record

    return [IngestItem(uidl, body, internaldate(body, limits.max_header_bytes),
                       cache=analyze_for_store(body, limits),
                       sort_fields=extract_record(body, limits.max_header_bytes),
                       digest=message_digest(digest_key, body) if digest is None else digest,
                       reused=reused)
            for uidl, body, digest, reused in batch]


def mime_limits(config: Config) -> MimeLimits:
    """The MIME scanner's bounds from `gateway.limits` (defaults without a gateway section)."""
    if config.gateway is None:
        return MimeLimits()
    limits = config.gateway.limits
    return MimeLimits(limits.mime_max_depth, limits.mime_max_parts, limits.mime_max_header_bytes,
                      limits.envelope_max_addresses)
