"""The `Store` protocol: everything the gateway keeps, behind one async interface.

Theory of operation: an *account* is (upstream name, user). It owns *mailboxes* (INBOX plus folders),
each with a UIDVALIDITY fixed at creation, a UIDNEXT that only grows, and a HIGHESTMODSEQ. A *message*
lives in one mailbox under a UID that is never reused; its raw RFC 822 body and an opaque cache blob
(ENVELOPE/BODYSTRUCTURE JSON filled by the IMAP layer) are kept once per account and shared by copies.

Every call that changes messages takes a new MODSEQ for the mailbox (one per call, shared by all the
messages it touches, RFC 7162 3.1.5 allows that) and appends one row per message to the change log in
the same transaction, so `changes_since()` can drive IDLE pushes and QRESYNC. Mailbox-level calls
(create, rename) and subscriptions change no message and take no MODSEQ.

Ingest is keyed by the POP3 UIDL: the set of UIDLs an account has ever ingested is kept even after
the IMAP user expunges the message, so the fetcher never brings it back. That set also carries the
retention bookkeeping (when each UIDL was fetched, whether it was deleted upstream).

Expunged bodies (issue 13). `expunge()`, `move()` and `delete_mailbox()` remove message rows (and
log them) but leave a body that no message refers to any more in place: a session that has not yet
been sent the EXPUNGE may still read it (RFC 2180 4.1.1), through a copy of the body, too.
The gateway calls `collect_bodies(ids)` once no session shows those messages; SQLite also sweeps
such orphans when it opens (no process can pin them then), PostgreSQL decides with every live
replica (`_pg_bodies.py`).

\\Recent (RFC 3501 2.3.2, issue 13). Each mailbox keeps a *recent floor*: the lowest UID that no
session has had as \\Recent yet. `recent_floor(id, claim_upto=n)` atomically raises it past `n` and
returns the old value, so each UID is claimed by exactly one caller, across sessions, processes
and restarts; `recent_floor(id)` only reads it (EXAMINE, STATUS RECENT).

EXPUNGE (issue 13). `expunge(id, uids, only_deleted=True)` removes only those of the UIDs that
carry \\Deleted inside its own transaction: the IMAP layer's list comes from a session's view, and
another session may have removed the flag since (expunging those would lose mail).

Sort fields (issue 17). Next to its cache blob, a body may carry a small opaque *sort-fields*
blob: what SORT and THREAD read of its header (the gateway's `sortkeys.py` encodes it), written
with the body at ingest and APPEND, or later by `set_sort_fields` (bodies stored before it
existed get it at their first SORT), so a SORT reads one small record per message instead of
parsing every header. Sealed like the cache.

Change-log pruning (issue 13). `prune_changes(id, below)` deletes change rows with MODSEQ below
`below` and remembers that floor; from then on `changes_since(id, m)` with `m + 1 < floor` raises
`ChangesPruned` (the log cannot say what changed), and callers fall back (a full reload; for
QRESYNC, VANISHED computed from the UIDs that exist). The gateway decides what to prune (README).

Implementations: `sqlite.SqliteStore` (embedded) and `postgres.PostgresStore` (several replicas on
one database); both run the same test suite.
"""

from __future__ import annotations

import datetime as dt
import enum
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Collection, NamedTuple, Protocol, Sequence

INBOX = "INBOX"
HIERARCHY_DELIMITER = "/"
# Created with every new account: name -> RFC 6154 special-use attribute.
DEFAULT_MAILBOXES: dict[str, str | None] = {
    "INBOX": None,
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
# RFC 3501 2.3.2 system flags, canonical spelling. \Recent is session state, never stored.
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


class StoreError(Exception):
    """A request the store refuses (unknown mailbox, duplicate name, ...); the message is for the user."""


class MailboxNotFound(StoreError):
    pass


class StoreFailure(StoreError):
    """The store itself failed (database error, disk full, locked too long): not the user's
    request. Refusals are plain StoreError."""


class StoreUnavailable(StoreFailure):
    """The store cannot be reached right now (database restarting, network down): try again
    later (IMAP `NO [UNAVAILABLE]`, RFC 5530)."""


class MailboxExists(StoreError):
    pass


class ChangesPruned(StoreError):
    """`changes_since` cannot answer: part of the asked range was pruned (`prune_changes`)."""


class FlagMode(enum.Enum):
    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


class ChangeKind(enum.Enum):
    APPEND = "append"
    FLAGS = "flags"
    EXPUNGE = "expunge"


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    upstream: str
    user: str


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account as `mailproxy gateway accounts` lists it."""

    account: Account
    messages: int             # in all its mailboxes (a copy counts again)
    bytes: int                # of its stored bodies (a body shared by copies counts once)
    last_fetch: float | None  # Unix time its newest message was fetched upstream; None: none yet
    last_sync: float | None = None      # Unix time of its last successful sync; None: none yet
    last_error: str | None = None       # "reason: message" of the last failed sync, if no success since
    last_error_at: float | None = None  # Unix time of that failure


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    exists: int          # number of messages


@dataclass(frozen=True, slots=True)
class MessageMeta:
    id: int              # row id: stable for this (mailbox, uid)
    mailbox_id: int
    uid: int
    internaldate: dt.datetime   # timezone-aware
    size: int            # RFC822.SIZE: bytes of the raw message
    flags: frozenset[str]
    modseq: int
    body_id: int         # shared by copies of the message within the account
    pop3_uidl: str | None  # set on ingested messages (and kept by their copies)
    saved: dt.datetime | None = None   # SAVEDATE (RFC 8514): saved into this mailbox (UTC)

    def with_flags(self, flags: frozenset[str], modseq: int) -> MessageMeta:
        """A copy with new flags and MODSEQ (the constructor: `dataclasses.replace` costs 5x,
        and the IDLE fan-out does this once per message per session)."""
        return MessageMeta(self.id, self.mailbox_id, self.uid, self.internaldate, self.size, flags,
                           modseq, self.body_id, self.pop3_uidl, self.saved)


@dataclass(frozen=True, slots=True)
class Change:
    modseq: int
    kind: ChangeKind
    uid: int


@dataclass(frozen=True, slots=True)
class IngestItem:
    uidl: str
    body: bytes
    internaldate: dt.datetime
    cache: bytes | None = None
    sort_fields: bytes | None = None
    digest: bytes | None = None   # keyed content digest (gateway/sync_identity.py)
    reused: bool = False          # a UIDL gone upstream, listed again on other mail (RFC 1939 7)


@dataclass(frozen=True, slots=True)
class AppendItem:
    body: bytes
    flags: Sequence[str] = ()
    internaldate: dt.datetime | None = None
    cache: bytes | None = None
    sort_fields: bytes | None = None


class FlagUpdate(NamedTuple):
    uid: int
    flags: frozenset[str]
    modseq: int
    changed: bool        # False: flags were already so, MODSEQ not bumped


class Usage(NamedTuple):
    bytes: int           # sum of the messages' sizes, copies included
    messages: int


@dataclass(frozen=True, slots=True)
class StoreFlagsResult:
    updated: list[FlagUpdate]   # every listed message that exists and passed UNCHANGEDSINCE
    modified: list[int]         # RFC 7162 3.1.3 MODIFIED: failed the UNCHANGEDSINCE test
    # those messages' flags and MODSEQ as stored: the change that failed the test may not have
    # been published to the other sessions yet
    failed: list[FlagUpdate] = field(default_factory=list)


class Store(Protocol):
    """Async message store. Every method may raise StoreError (refused) or StoreKeyError (crypto)."""

    objectid_key: bytes   # the store's random secret for OBJECTID (RFC 8474 7), kept by migrate
    uidl_digest_key: bytes   # its secret for POP3 content digests (crypto.digest_secret)

    # accounts and credentials
    async def ensure_account(self, upstream: str, user: str) -> Account: ...
    async def get_account(self, upstream: str, user: str) -> Account | None: ...
    async def save_credentials(self, account_id: int, blob: bytes) -> None: ...
    async def load_credentials(self, account_id: int) -> bytes | None: ...
    async def accounts_with_credentials(self) -> list[Account]: ...
    async def account_summaries(self) -> list[AccountSummary]: ...   # by user, then upstream
    # a sync's outcome: None = success (last sync now, error cleared), else a sanitized reason
    async def record_sync(self, account_id: int, error: str | None) -> None: ...
    # the account and everything it owns: mailboxes, messages, bodies, UIDLs, changes, credentials
    async def delete_account(self, account_id: int) -> None: ...
    @property
    def can_store_credentials(self) -> bool:
        """A key ring is configured (credentials are never kept in clear)."""

    # mailboxes
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def create_mailbox(self, account_id: int, name: str,
                             special_use: str | None = None) -> Mailbox: ...
    # the body ids of the messages it removed: like `expunge`'s, they stay until `collect_bodies`
    async def delete_mailbox(self, account_id: int, name: str) -> list[int]: ...
    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None: ...
    # subscriptions: a set of names, independent of the mailboxes (RFC 3501 6.3.6): CREATE,
    # DELETE and RENAME leave it alone; a new account starts with its default mailboxes in it
    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...
    async def subscriptions(self, account_id: int) -> list[str]: ...
    async def uidvalidity(self, mailbox_id: int) -> int: ...
    async def highest_modseq(self, mailbox_id: int) -> int: ...

    # messages
    async def append(self, mailbox_id: int, body: bytes, flags: Sequence[str] = (),
                     internaldate: dt.datetime | None = None,
                     cache: bytes | None = None, sort_fields: bytes | None = None) -> int: ...
    async def append_many(self, mailbox_id: int,
                          items: Sequence[AppendItem]) -> list[int]: ...   # all or none
    async def messages(self, mailbox_id: int) -> list[MessageMeta]: ...
    async def body(self, message: MessageMeta) -> bytes: ...
    async def cache(self, message: MessageMeta) -> bytes | None: ...
    async def set_cache(self, message: MessageMeta, cache: bytes) -> None: ...
    async def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                          mode: FlagMode, unchanged_since: int | None = None) -> StoreFlagsResult: ...
    async def copy(self, src_mailbox_id: int, uids: Sequence[int],
                   dst_mailbox_id: int) -> list[tuple[int, int]]: ...
    async def move(self, src_mailbox_id: int, uids: Sequence[int],
                   dst_mailbox_id: int) -> list[tuple[int, int]]: ...
    async def expunge(self, mailbox_id: int, uids: Sequence[int],
                      only_deleted: bool = False) -> list[int]: ...   # see the docstring
    async def collect_bodies(self, body_ids: Sequence[int]) -> None: ...   # see the docstring
    async def recent_floor(self, mailbox_id: int, claim_upto: int | None = None) -> int: ...
    async def changes_since(self, mailbox_id: int, modseq: int) -> list[Change]: ...
    async def prune_changes(self, mailbox_id: int, below: int) -> int: ...   # see the docstring
    # batched forms (one call for many messages: FETCH, SEARCH, SELECT fast paths)
    async def bodies(self, messages: Sequence[MessageMeta]) -> list[bytes | None]: ...
    async def caches(self, messages: Sequence[MessageMeta]) -> list[bytes | None]: ...
    async def set_caches(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None: ...
    async def messages_by_uid(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]: ...
    # sort-fields blobs (see the docstring): None when absent (or the body is gone)
    async def sort_fields(self, messages: Sequence[MessageMeta]) -> list[bytes | None]: ...
    async def set_sort_fields(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None: ...

    # POP3 ingest and retention
    async def ingest(self, account_id: int, uidl: str, body: bytes, internaldate: dt.datetime,
                     cache: bytes | None = None) -> int | None: ...
    async def ingest_many(self, account_id: int,
                          items: Sequence[IngestItem]) -> list[int | None]: ...
    async def known_uidls(self, account_id: int) -> set[str]: ...
    async def usage(self, account_id: int) -> Usage: ...   # quota (RFC 9208), issue 17
    async def fetched_at(self, account_id: int) -> dict[str, float]: ...
    async def uidl_rows(self, account_id: int) -> dict[str, float | None]: ...
    async def uidl_digests(self, account_id: int,
                           uidls: Collection[str]) -> dict[str, tuple[bytes | None, float]]: ...
    async def record_uidls(self, account_id: int,
                           rows: Sequence[tuple[str, bytes, float]]) -> None: ...
    async def uidl_messages(self, account_id: int,
                            uidls: Collection[str]) -> dict[str, MessageMeta]: ...
    async def set_uidl_digests(self, account_id: int,
                               rows: Sequence[tuple[str, bytes]]) -> None: ...
    async def mark_deleted_upstream(self, account_id: int, uidls: Sequence[str]) -> None: ...
    # `async with store.fetch_lease(upstream, user) as mine`: mine is True when no other process
    # sharing the store is fetching that mailbox (held until the block ends or the process dies)
    def fetch_lease(self, upstream: str, user: str) -> AbstractAsyncContextManager[bool]: ...

    # maintenance
    async def flush(self) -> None: ...
    async def size_bytes(self) -> int: ...
    async def close(self) -> None: ...


def normalize_flags(flags: Sequence[str]) -> frozenset[str]:
    """System flags in canonical case; keywords as given. \\Recent is dropped (session state)."""
    canonical = {flag.lower(): flag for flag in SYSTEM_FLAGS}
    out = set()
    for flag in flags:
        if flag.lower() == "\\recent":
            continue
        out.add(canonical.get(flag.lower(), flag))
    return frozenset(out)
