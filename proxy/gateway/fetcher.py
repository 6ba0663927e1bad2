"""POP3 -> Store: copy an upstream POP3 mailbox into the gateway's store, safely.

Theory of operation (one `sync_account` call):

    connect (TLS per upstream.pop3.tls) -> greeting -> CAPA -> USER/PASS (or AUTH PLAIN)
    -> UIDL -> diff against store.uidl_rows() -> RETR the new ones (pipelined when CAPA says
    PIPELINING) -> ingest_many() every ingest_batches.BATCH_MESSAGES / BATCH_BYTES -> retention:
    DELE -> QUIT

* Nothing lost, nothing twice: a batch is one store transaction, keyed by UIDL. A crash loses at
  most the uncommitted batch, which the next sync fetches again; a committed message is never
  fetched again, even after the IMAP user expunged it. Except when its UIDL may name other mail
  now (`sync_identity`, by content digest): a UIDL listed again after its message left the
  listing (RFC 1939 7 lets a server reuse it) is read once more, and so is mail under UIDLs
  that changed (a new UIDL format): matched to the stored messages, not stored twice.
* DELE is only sent for messages already committed (and fsynced, `store.flush()`), and only per
  `gateway.upstream_retention`: `keep` never sends DELE. DELE takes effect at QUIT (RFC 1939 6,
  UPDATE state), so the store records "deleted upstream" only after QUIT succeeded; if QUIT fails
  the DELEs did not happen and are simply sent again next time.
* A message deleted upstream by someone else stays in the store: the fetcher never removes mail.
* A server without UIDL (-ERR to UIDL): every message is RETR'd each time and de-duplicated by
  content digest, synthetic UIDL "sha256:<hex>". Limitation: two byte-identical messages are one.
  So is a message whose UIDL breaks RFC 1939 7 or repeats another's (`pop3_listing`), counted
  as ``bad_uidl`` in the sync's `anomalies` (metric mailproxy_gateway_upstream_anomalies_total).
* Hostile upstreams are bounded by `pop3_client.ReplyLimits` (``gateway.limits``): a reply too
  slow fails the sync (the account's next sync starts afresh); a message over
  ``max_message_bytes`` is read, dropped and left upstream (``too_big``), as is one whose RETR
  is refused (``retr_refused``; such a sync does not settle, so the next one asks again). A
  message too big or too slow STRIKES times is passed over for a while
  (`AccountLocks.passing_over`, ``passed_over``): it would fail every sync of the account
  first, and the mail listed after it would never arrive.
* A sync's time is bounded too (``gateway.limits.sync_budget``, `SyncBudget`): a server answering
  each reply just under its timeout would otherwise hold the account's sync lock for N x
  timeout. Once spent, no RETR is sent; what was fetched is committed, nothing else DELEd, and
  the next poll goes on from there (at least one message further each time: `pop3_retrieve`).
* A reply that breaks the protocol, or a RETR cut short, aborts the sync with an `UpstreamError`
  (proxy.session.upstream; its `failure` says why); a partial body is never stored (only complete
  bodies reach a batch).

* Every login syncs: under `keep`, a listing identical to the one the account's last sync left
  entirely stored (`AccountLocks.settled`, by digest) ends the sync at once (QUIT), with no
  store read and no parsing.

The POP3 session itself (connect, TLS, login, framing over the sans-IO `proxy.pop3`) is
`pop3_client.Pop3Client`, the listings and arrival dates are parsed in `pop3_listing.py`, the
RETRs are `pop3_retrieve.py`, and the batches of bodies are analysed and committed by
`ingest_batches.py`; this module only makes the decisions of a sync.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from .. import logs
from ..config import Config
from ..pop3 import writer
from ..session.failures import Failure
from ..session.routing import log_user
from ..session.upstream import UpstreamError
from ..store import Store
from . import sync_identity
from .account_locks import PASS_OVER, STRIKES, AccountLocks
from .ingest_batches import Ingest, ProgressCallback, StoredCallback, mime_limits, quota_gate
from .pop3_client import Pop3Client, ReplyLimits, SyncCut
from .pop3_listing import internaldate, parse_list_listing, parse_uidl_listing, parsed
from .pop3_retrieve import DIGEST_PREFIX, PIPELINE_WINDOW, SyncBudget, fetch
from .workers import Workers

__all__ = ["SyncResult", "sync_account", "internaldate",
           "parse_uidl_listing", "parse_list_listing"]

SYNC_BUDGET = 15 * 60.0             # seconds a sync fetches (gateway.limits.sync_budget)


@dataclass(frozen=True, slots=True)
class SyncResult:
    new: int                 # messages stored by this sync
    bytes: int               # their raw size
    deleted_upstream: int    # DELEs that took effect (QUIT succeeded)
    duration: float          # seconds
    skipped: bool = False    # another process sharing the store was fetching this account
    over_quota: int = 0      # new messages left upstream: the account is over gateway.quota
    # what the upstream did wrong, by kind (bad_uidl, too_big, retr_refused): messages counted
    anomalies: dict[str, int] = field(default_factory=dict)
    # gateway.limits.sync_budget ran out: what was fetched is stored, the next sync goes on
    budget_spent: bool = False


# ---- one sync --------------------------------------------------------------------------------------

async def _listing(client: Pop3Client, uidl: bytes | None,
                   workers: Workers) -> list[tuple[int, str | None]]:
    """[(message number, UIDL or None)] from the UIDL listing, or (None: the server has no
    UIDL) from LIST."""
    if uidl is not None:
        listing = await parsed(parse_uidl_listing, uidl, workers)
        if bad := sum(u is None for _, u in listing):
            logs.event("gateway_fetch_bad_uidl", logging.WARNING, count=bad,
                       note="UIDLs breaking RFC 1939 7 or repeated: these messages are "
                            "de-duplicated by sha256 and downloaded on every sync")
        return listing
    logs.event("gateway_fetch_no_uidl", logging.WARNING,
               note="upstream refused UIDL: de-duplicating by sha256 of each message, "
                    "every message is downloaded on every sync")
    scan = await client.multiline(b"LIST")
    if scan is None:
        raise UpstreamError(Failure.UPSTREAM, "LIST refused")
    return [(number, None) for number in await parsed(parse_list_listing, scan, workers)]


async def _delete(client: Pop3Client, numbers: list[tuple[int, str]],
                  budget: SyncBudget) -> tuple[list[str], bool]:
    """DELE each (number, uidl): the UIDLs the server accepted (effective only after QUIT), and
    whether all were sent.
    The first window is sent and waited for whatever the sync's budget says (each sync DELEs
    some); after it, no DELE once the budget is spent (the rest: next sync), and its end cuts
    the wait for a window's replies (SyncCut: no QUIT, so none of the DELEs takes effect)."""
    accepted: list[str] = []
    window = PIPELINE_WINDOW if client.pipelining else 1
    for start in range(0, len(numbers), window):
        if start:
            if budget.spent:
                budget.disarm(client)
                return accepted, False
            budget.arm(client)
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
    budget.disarm(client)   # QUIT: the DELEs accepted take effect with it only
    return accepted, True


async def _retention(client: Pop3Client, store: Store, account_id: int, seconds: float | None,
                     present: dict[str, int], who: str, budget: SyncBudget,
                     digests_complete: bool = True) -> tuple[int, bool]:
    """Apply upstream_retention to committed messages, then QUIT: the DELEs that took effect,
    and whether all that were due were sent (False: the sync's budget ran out first).
    `digests_complete` False: a message of the listing was not read (RETR refused, too big), so
    a digest missing from `present` may be that message's: digest-keyed mail is not marked
    deleted upstream this time (marked, delete-after-fetch would never DELE it)."""
    fetched = await store.fetched_at(account_id)
    gone = [uidl for uidl in fetched if uidl not in present
            and (digests_complete or not uidl.startswith(DIGEST_PREFIX))]
    if gone:   # deleted upstream by another client: only bookkeeping, the store keeps the mail
        await store.mark_deleted_upstream(account_id, gone)
    if seconds is None:   # keep: never DELE
        await client.quit()
        return 0, True
    cutoff = time.time() - seconds
    victims = sorted((present[u], u) for u, at in fetched.items() if u in present and at <= cutoff)
    if not victims:
        await client.quit()
        return 0, True
    await store.flush()   # the store's copy must survive a power loss before the upstream's goes
    accepted, sent_all = await _delete(client, victims, budget)
    if not await client.quit():
        logs.event("gateway_fetch_dele_not_applied", logging.WARNING, user=who,
                   count=len(accepted))
        return 0, sent_all
    await store.mark_deleted_upstream(account_id, accepted)
    return len(accepted), sent_all


async def _sync_listing(client: Pop3Client, config: Config, store: Store, account_id: int,
                        listing: list[tuple[int, str | None]], progress: ProgressCallback | None,
                        who: str, workers: Workers, passed: set[str], failed: set[str],
                        budget: SyncBudget, on_stored: StoredCallback | None = None,
                        carry: set[str] | None = None) -> tuple[Ingest, int, bool]:
    """Fetch what `listing` has and the store does not, then retention and QUIT: (the ingest,
    whose counts say what was stored and left upstream, the DELEs that took effect, and
    whether the budget cut the sync short). Messages `passed` over are left upstream
    (AccountLocks.passing_over); `failed` gets those to pass over from now on. Cut short by
    the budget: no DELE (that is for a sync that has time left); with replies in flight not
    even QUIT (the caller drops the connection: none of the session's DELEs takes effect)."""
    rows = await store.uidl_rows(account_id)   # (UIDL -> fetched_at, None: gone upstream)
    known = set(rows)
    carry = set() if carry is None else carry   # (AccountLocks.unmatched: in, then out)
    identities = await sync_identity.load(store, account_id,
                                          {u for _, u in listing if u is not None}, rows, carry)
    wanted = [(n, u) for n, u in listing
              if u is None or u not in known or u in identities.reappeared]
    over = [(n, u) for n, u in wanted if u in passed] if passed else []
    if over:
        wanted = [(n, u) for n, u in wanted if u not in passed]
    gate = await quota_gate(config, store, account_id) if wanted else None
    # already full: no RETR of a message with a UIDL at all, it would be thrown away (one
    # known by digest only must be read to know whether it is stored already)
    left = [(n, u) for n, u in wanted if u is not None] if gate is not None and gate.full else []
    if left:
        wanted = [(n, u) for n, u in wanted if u is None]
    try:
        ingest, digests, cut = await fetch(client, store, account_id, wanted, known, progress,
                                            mime_limits(config), gate, workers, failed, budget,
                                            identities, on_stored)
    finally:   # UIDLs of stored messages, renamed or listed again, whose framing held (even if
        # the sync fails after them): before retention, which DELEs them
        await store.record_uidls(account_id, identities.recorded)
    ingest.over_quota += len(left)
    carry.clear()   # new UIDLs left unread (budget, quota): rows that left may be their mail
    if cut is not None or ingest.over_quota:
        carry.update(identities.unmatched())
    if cut:
        return ingest, 0, True
    if over:
        ingest.skipped["passed_over"] = len(over)
    present = {**digests, **{u: n for n, u in listing if u is not None}}
    retention = config.gateway.retention_seconds if config.gateway else None
    budget.disarm(client)   # QUIT and DELE's first window are waited for (within reply limits)
    try:
        deleted, sent_all = await _retention(
            client, store, account_id, None if cut is False else retention, present, who, budget,
            digests_complete=not ingest.skipped and cut is None)
    except SyncCut:   # (DELEs sent but no QUIT: none took effect, RFC 1939 6)
        return ingest, 0, True
    return ingest, deleted, cut is False or not sent_all


def reply_limits(config: Config) -> ReplyLimits:
    """The POP3 client's bounds on an upstream's replies, from ``gateway.limits``."""
    if config.gateway is None:
        return ReplyLimits()
    limits = config.gateway.limits
    return ReplyLimits(limits.pop3_reply_timeout, limits.pop3_min_rate, limits.max_message_bytes,
                       limits.max_listing_bytes)


def sync_budget(config: Config) -> float:
    """``gateway.limits.sync_budget``: how long one sync fetches before it ends (the next goes on)."""
    return config.gateway.limits.sync_budget if config.gateway else SYNC_BUDGET


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
        budget = SyncBudget(sync_budget(config))
        if not mine:
            logs.event("gateway_sync_skipped", user=who, upstream=upstream_name,
                       reason="another process is fetching this account")
            return SyncResult(0, 0, 0, time.monotonic() - started, skipped=True)
        client = await Pop3Client.connect(upstream, reply_limits(config))
        failed: set[str] = set()   # UIDLs to pass over from now on
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
                anomalies: dict[str, int] = {}
                budget_spent = False
            else:
                locks.settled.pop((upstream_name, user), None)
                listing = await _listing(client, uidl, workers)
                # no UIDL, or UIDLs breaking RFC 1939 7: such messages are read on every sync
                rereads = any(u is None for _, u in listing)
                if rereads:
                    listing = locks.resume_at(upstream_name, user, listing)
                ingest, deleted, budget_spent = await _sync_listing(
                    client, config, store, account.id, listing, progress, who, workers,
                    locks.passing_over(upstream_name, user), failed, budget, on_stored,
                    locks.unmatched.setdefault((upstream_name, user), set()))
                new, stored, over_quota = ingest.new, ingest.bytes, ingest.over_quota
                anomalies = dict(ingest.skipped)
                if has_uidl and (bad := sum(u is None for _, u in listing)):
                    anomalies["bad_uidl"] = bad
                if budget_spent and rereads and budget.reached is not None:
                    locks.resume[(upstream_name, user)] = budget.reached + 1
                if budget_spent:
                    logs.event("gateway_sync_budget_spent", user=who,
                               upstream=upstream_name, new=new, budget=sync_budget(config),
                               note="the fetched mail is stored; the next sync goes on")
                if settled is not None and not over_quota and not budget_spent and \
                        not anomalies.keys() & {"retr_refused", "too_big", "passed_over"}:
                    # (each asked again)
                    locks.settled[(upstream_name, user)] = settled
        except UpstreamError as exc:
            logs.event("gateway_sync_failed", logging.WARNING, user=who,
                       upstream=upstream_name, reason=exc.failure.label, detail=exc.detail)
            raise
        finally:
            if failed:
                logs.event("gateway_fetch_failed_messages", logging.WARNING, user=who,
                           upstream=upstream_name, messages=len(failed),
                           note=f"RETR timed out or too big: after {STRIKES} such failures "
                                f"left upstream for {PASS_OVER:g}s, then asked again")
                locks.failed(upstream_name, user, failed)
            await client.aclose()
    result = SyncResult(new, stored, deleted, time.monotonic() - started, over_quota=over_quota,
                        anomalies=anomalies, budget_spent=budget_spent)
    if result.over_quota:
        logs.event("gateway_sync_over_quota", logging.WARNING, user=who, upstream=upstream_name,
                   kept_upstream=result.over_quota)
    logs.event("gateway_sync_done", user=who, upstream=upstream_name,
               mode="uidl" if has_uidl else "digest", new=result.new, bytes=result.bytes,
               deleted_upstream=result.deleted_upstream, duration=round(result.duration, 3),
               **{f"upstream_{kind}": count for kind, count in sorted(anomalies.items())})
    return result


