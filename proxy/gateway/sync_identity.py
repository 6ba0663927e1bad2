"""Which upstream message is which across syncs when a UIDL alone cannot say: a keyed digest of
each stored message's content beside its UIDL (the `uidls.digest` column, schema step 9).

Theory of operation. The fetcher keys mail by UIDL (RFC 1939 7), and two things a server may do
break "one UIDL, one message, for ever":

* A UIDL reused. RFC 1939 7 only forbids reusing a unique-id "for as long as the entity using
  the unique-id exists": once that message is gone (DELEd by the gateway, or deleted by another
  client, so a complete listing went without it and its row has `deleted_upstream_at`), the
  server may give the UIDL to new mail. A UIDL whose row is gone and that is listed again
  (`reappeared`) is read once more: the same digest is the same message (its row is upstream
  again, nothing stored); another digest, or a row without one, is new mail, stored as a new
  message (`IngestItem.reused`: the row then names it) while the old one stays stored. Either
  way the row is upstream again, so later syncs do not read it again.
* UIDLs renamed (say Dovecot's `pop3_uidl_format` changed). Every message then looks new and is
  read (POP3 has nothing cheaper), but one whose digest is that of a row that left the listing
  in this very sync (`left`) is that stored message under a new name: the new UIDL is recorded
  beside it (`Store.record_uidls`, with the old row's `fetched_at`, so delete-after-fetch DELEs
  it when the old one was due), and nothing is stored twice. Only rows that left in this sync,
  one new UIDL per row: two byte-identical messages both upstream stay two messages, and
  identical mail arriving long after the first was deleted is stored.

A row stored before schema step 9 has no digest: when a sync needs it (listed again, or left
the listing), it is taken from the message stored under that UIDL (`backfill`) and kept. If the
user expunged that message, there is none: listed again, the UIDL counts as new mail (at worst
one copy more, nothing lost); renamed, the mail is stored once more.

The digest is HMAC-SHA256 under the store's own secret (`crypto.digest_secret`, sealed with the
key ring when the store is encrypted), not a plain hash: a plain SHA-256 of each body would let
whoever holds a copy of the database (a backup, `gateway migrate`'s target) test whether a
message they know is in someone's mailbox, though the bodies themselves are encrypted.
"""

from __future__ import annotations

import enum
import hmac
from typing import Collection, Mapping

import trio

from .. import logs
from ..store import Store

__all__ = ["DIGEST_INLINE", "Identities", "Placed", "load", "message_digest"]

DIGEST_INLINE = 256 * 1024   # bytes: a bigger body is hashed in a thread, not on the event loop
BACKFILL_SLICE = 16          # stored bodies read at once to take the digests of old rows


def message_digest(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")


class Placed(enum.Enum):
    STORED = "stored"   # a stored message: its UIDL is recorded, the body not stored again
    REUSED = "reused"   # new mail under a UIDL gone upstream: stored, the row names it
    NEW = "new"         # new mail


class Identities:
    """One sync's rows that a digest decides: `reappeared` (UIDL -> (digest, fetched_at) of rows
    gone upstream and listed again) and `left` (the same of rows upstream until this listing)."""

    def __init__(self, key: bytes, reappeared: dict[str, tuple[bytes | None, float]],
                 left: dict[str, tuple[bytes | None, float]]):
        self.key = key
        self.reappeared = reappeared
        self.left: dict[bytes, list[tuple[str, float]]] = {}   # digest -> (UIDL, fetched_at)
        for uidl, (digest, at) in sorted(left.items()):
            if digest is not None:
                self.left.setdefault(digest, []).append((uidl, at))
        self.recorded: list[tuple[str, bytes, float]] = []   # for Store.record_uidls

    def unmatched(self) -> set[str]:
        """The rows of `left` no new UIDL took (yet): after a sync that left new UIDLs unread
        (its budget, the quota), their mail may be among those, so the next sync takes them
        as `left` again (`load(carried=...)`), though they are marked gone by then."""
        return {uidl for rows in self.left.values() for uidl, _ in rows}

    def wants(self, uidl: str, known: Collection[str]) -> bool:
        """Must the body read under `uidl` be placed by its digest?"""
        return uidl in self.reappeared or (bool(self.left) and uidl not in known)

    async def digest(self, body: bytes) -> bytes:
        if len(body) <= DIGEST_INLINE:
            return message_digest(self.key, body)
        return await trio.to_thread.run_sync(message_digest, self.key, body)

    def place(self, uidl: str, digest: bytes) -> Placed:
        """What the body read under `uidl`, of `digest`, is."""
        if uidl in self.reappeared:
            old, at = self.reappeared.pop(uidl)
            if old == digest:   # listed again on the same message
                self.recorded.append((uidl, digest, at))
                return Placed.STORED
            return Placed.REUSED
        rows = self.left.get(digest)
        if rows:   # renamed
            _, at = rows.pop()
            self.recorded.append((uidl, digest, at))
            return Placed.STORED
        return Placed.NEW


async def load(store: Store, account_id: int, listed: Collection[str],
               known: Mapping[str, float | None], carried: Collection[str] = ()) -> Identities:
    """The sync's `Identities`: `listed` the listing's UIDLs, `known` every UIDL the account
    ever had (`Store.uidl_rows`: its fetched_at, None when gone upstream). Rows of digest-keyed
    mail (`pop3_retrieve.DIGEST_PREFIX`) are never listed, so never `left`. `carried`: rows
    that left the listing in an earlier sync that did not read every new UIDL (`unmatched`),
    gone upstream since: `left` too, unless listed again (then they are `reappeared`)."""
    from .pop3_retrieve import DIGEST_PREFIX

    reappeared = [u for u in listed if u in known and known[u] is None]
    renamed = any(u not in known for u in listed)
    left = [u for u, at in known.items()
            if (at is not None or u in carried) and u not in listed
            and not u.startswith(DIGEST_PREFIX)] \
        if renamed else []
    rows = await store.uidl_digests(account_id, [*reappeared, *left]) \
        if reappeared or left else {}
    if missing := [u for u, (digest, _) in rows.items() if digest is None]:
        for uidl, digest in (await backfill(store, account_id, missing)).items():
            rows[uidl] = (digest, rows[uidl][1])
    return Identities(store.uidl_digest_key,
                      {u: rows[u] for u in reappeared if u in rows},
                      {u: rows[u] for u in left if u in rows})


async def backfill(store: Store, account_id: int, uidls: list[str]) -> dict[str, bytes]:
    """The digests of rows stored before schema step 9 (`uidls`: without one), from the
    messages stored under them, written to their rows: taken only for rows a sync needs
    (listed again, or left the listing while new UIDLs came), so an upgrade costs no download
    and no pass over every mailbox. A row whose message the user expunged stays without."""
    found: dict[str, bytes] = {}
    messages = list((await store.uidl_messages(account_id, uidls)).items())
    for start in range(0, len(messages), BACKFILL_SLICE):   # (memory: a slice of bodies)
        chunk = messages[start:start + BACKFILL_SLICE]
        bodies = await store.bodies([message for _, message in chunk])
        digests = await trio.to_thread.run_sync(_digests, store.uidl_digest_key, bodies)
        rows = [(uidl, digest) for (uidl, _), digest in zip(chunk, digests, strict=True)
                if digest is not None]
        await store.set_uidl_digests(account_id, rows)
        found.update(rows)
    if uidls:
        logs.event("gateway_sync_digests_backfilled", rows=len(uidls), found=len(found),
                   note="UIDLs stored before schema step 9, listed again or renamed")
    return found


def _digests(key: bytes, bodies: list[bytes | None]) -> list[bytes | None]:
    return [None if body is None else message_digest(key, body) for body in bodies]
