"""The embedded Store: one SQLite file in WAL mode.

Theory of operation: one `sqlite3` connection, used one call at a time; how a call reaches it
(a worker thread, or the trio thread for *quick* calls of small bounded work) is `QuickCalls`
in `_sqlite_quick.py`. Every write runs in `BEGIN IMMEDIATE ... COMMIT` (the write lock is taken
up front, so two processes sharing the file queue on `busy_timeout` instead of failing on a lock
upgrade). `ingest_many` commits a whole batch in one transaction.

Durability: `journal_mode=WAL` + `synchronous=NORMAL`. A commit is in the -wal file (the OS page
cache) when COMMIT returns, so a killed process (SIGKILL, OOM) loses nothing committed; only a power
loss or kernel crash can lose the last commits, and never corrupts the file. The fetcher calls
`flush()` (fsync of the WAL) before it sends any DELE upstream, so a message is on disk before the
only other copy goes away.

The schema, its migrations, transactions and the key check are `_schema.py`; the mailboxes
(create, delete, rename, subscriptions) are the `MailboxOps` mixin in `_sqlite_mailboxes.py`,
over the message operations (append, flags, copy/move/expunge, changes) of `MessageOps` in
`_sqlite_messages.py`, over `BodyOps` (`_sqlite_bodies.py`: bodies, cache blobs, sort fields).
This module is the store object: accounts and credentials, POP3 ingest and retention
bookkeeping, maintenance.

Bodies, cache blobs and sort-fields records are sealed by `crypto.seal` (zlib, then AES-GCM when
a key ring is given) with associated data "acct:{account}:body:{body_id}" (":cache:", ":sort:").
Body ids come from AUTOINCREMENT and are never reused, so the associated data of a record never
changes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import time
from typing import AsyncIterator, Collection, Sequence

import trio

from . import crypto
from ._accounts_sql import USAGE_SELECT, delete_statements, record_sync, summary_select
from ._rows import from_date, meta, save_time
from ._schema import SCHEMA_VERSION, migrate, objectid_key, open_db, transaction, uidl_digest_key
from ._sqlite_mailboxes import MailboxOps
from ._sqlite_quick import QuickCalls
from ._uidls_sql import RECORD_UIDL, REUSE_UIDL, SET_DIGEST, UIDL_MESSAGES, UIDL_ROWS
from .base import (
    DEFAULT_MAILBOXES,
    INBOX,
    Account,
    AccountSummary,
    ChangeKind,
    IngestItem,
    MessageMeta,
    Usage,
)
from .crypto import KeyRing, StoreKeyError

__all__ = ["SqliteStore", "open_sqlite", "SCHEMA_VERSION", "migrate"]

class SqliteStore(QuickCalls, MailboxOps):
    """See the module docstring. Create with `await open_sqlite(path, key_ring)`."""

    def __init__(self, db: sqlite3.Connection, path: str, ring: KeyRing | None, *,
                 objectid_key: bytes, uidl_digest_key: bytes):
        super().__init__(db, path)
        self._ring = ring
        self.objectid_key = objectid_key
        self.uidl_digest_key = uidl_digest_key

    # ---- accounts and credentials ----------------------------------------------------------------

    def _ensure_account(self, upstream: str, user: str) -> Account:
        with transaction(self._db):
            cur = self._db.execute("INSERT OR IGNORE INTO accounts(upstream, user) VALUES (?, ?)",
                                   (upstream, user))
            account_id: int = self._db.execute(
                "SELECT id FROM accounts WHERE upstream = ? AND user = ?", (upstream, user)).fetchone()[0]
            if cur.rowcount:
                for name, special_use in DEFAULT_MAILBOXES.items():
                    self._new_mailbox(account_id, name, special_use)
                self._db.executemany("INSERT INTO subscriptions(account_id, name) VALUES (?, ?)",
                                     [(account_id, name) for name in DEFAULT_MAILBOXES])
        return Account(account_id, upstream, user)

    async def ensure_account(self, upstream: str, user: str) -> Account:
        """The account for (upstream, user), created with the default mailboxes on first use."""
        found = await self._quick(self._get_account, upstream, user)   # every login and sync
        return found if found is not None else await self._run(self._ensure_account, upstream, user)

    def _get_account(self, upstream: str, user: str) -> Account | None:
        row = self._db.execute("SELECT id FROM accounts WHERE upstream = ? AND user = ?",
                               (upstream, user)).fetchone()
        return None if row is None else Account(row[0], upstream, user)

    async def get_account(self, upstream: str, user: str) -> Account | None:
        return await self._run(self._get_account, upstream, user)

    def _save_credentials(self, account_id: int, blob: bytes) -> None:
        if self._ring is None:
            raise StoreKeyError("credentials are only stored encrypted: configure gateway.key_file")
        sealed = crypto.seal(blob, f"acct:{account_id}:credentials".encode(), self._ring)
        with transaction(self._db):
            self._db.execute("UPDATE accounts SET credentials = ? WHERE id = ?", (sealed, account_id))

    async def save_credentials(self, account_id: int, blob: bytes) -> None:
        """Keep `blob` (encrypted; refused with StoreKeyError when no key ring is configured)."""
        await self._run(self._save_credentials, account_id, blob)

    def _load_credentials(self, account_id: int) -> bytes | None:
        row = self._db.execute("SELECT credentials FROM accounts WHERE id = ?",
                               (account_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return crypto.unseal(row[0], f"acct:{account_id}:credentials".encode(), self._ring,
                             f"credentials of account {account_id}")

    async def load_credentials(self, account_id: int) -> bytes | None:
        return await self._run(self._load_credentials, account_id)

    def _accounts_with_credentials(self) -> list[Account]:
        rows = self._db.execute("SELECT id, upstream, user FROM accounts "
                                "WHERE credentials IS NOT NULL ORDER BY id").fetchall()
        return [Account(*row) for row in rows]

    async def accounts_with_credentials(self) -> list[Account]:
        """Accounts whose password is stored (encrypted) for background polling."""
        return await self._run(self._accounts_with_credentials)

    @property
    def can_store_credentials(self) -> bool:
        return self._ring is not None

    def _account_summaries(self) -> list[AccountSummary]:
        rows = self._db.execute(summary_select("user")).fetchall()
        return [AccountSummary(Account(*row[:3]), *row[3:]) for row in rows]

    async def account_summaries(self) -> list[AccountSummary]:
        return await self._run(self._account_summaries)

    def _record_sync(self, account_id: int, error: str | None, now: float) -> None:
        with transaction(self._db):
            self._db.execute(*record_sync("?", account_id, error, now))

    async def record_sync(self, account_id: int, error: str | None) -> None:
        await self._quick(self._record_sync, account_id, error, time.time())   # one row

    def _delete_account(self, account_id: int) -> None:
        with transaction(self._db):
            for statement in delete_statements("?"):
                self._db.execute(statement, (account_id,))

    async def delete_account(self, account_id: int) -> None:
        await self._run(self._delete_account, account_id)

    # ---- ingest and retention -------------------------------------------------------------------

    def _ingest_many(self, account_id: int, items: Sequence[IngestItem]) -> list[int | None]:
        now = time.time()
        results: list[int | None] = []
        with transaction(self._db):
            inbox = self._mailbox_id(account_id, INBOX)
            body_id = self._next_body_id()
            fresh: list[tuple[IngestItem, int]] = []
            for item in items:
                cur = self._db.execute("INSERT OR IGNORE INTO uidls(account_id, uidl, fetched_at, "
                                       "digest) VALUES (?, ?, ?, ?)",
                                       (account_id, item.uidl, now, item.digest))
                if not cur.rowcount and item.reused:   # new mail under a UIDL gone upstream
                    cur = self._db.execute(REUSE_UIDL.format(p="?"),
                                           (now, item.digest, account_id, item.uidl))
                if not cur.rowcount:
                    results.append(None)
                    continue
                self._insert_body(body_id, account_id, item.body, item.cache, item.sort_fields)
                fresh.append((item, body_id))
                body_id += 1
                results.append(-1)
            if not fresh:
                return results
            first = self._take_uids(inbox, len(fresh))
            modseq = self._bump(inbox)
            rows, saved = [], save_time()
            for offset, (item, bid) in enumerate(fresh):
                epoch, tz = from_date(item.internaldate)
                rows.append((inbox, first + offset, epoch, tz, "", modseq, bid, item.uidl, saved))
            self._db.executemany(
                "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                "body_id, pop3_uidl, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._log(account_id, inbox, modseq, ChangeKind.APPEND, [r[1] for r in rows])
        uids = iter(r[1] for r in rows)
        return [None if r is None else next(uids) for r in results]

    async def ingest_many(self, account_id: int, items: Sequence[IngestItem]) -> list[int | None]:
        """Add POP3 messages to INBOX in ONE transaction; per item its new UID, or None when its
        UIDL was ingested before (ever, even if expunged since)."""
        return await self._run(self._ingest_many, account_id, list(items))

    async def ingest(self, account_id: int, uidl: str, body: bytes, internaldate: dt.datetime,
                     cache: bytes | None = None) -> int | None:
        return (await self.ingest_many(account_id, [IngestItem(uidl, body, internaldate, cache)]))[0]

    async def usage(self, account_id: int) -> Usage:
        """What the account's messages hold (RFC 9208 STORAGE and MESSAGE: every copy counts):
        its counters (`_accounts_sql.py`)."""
        def usage() -> Usage:
            row = self._db.execute(USAGE_SELECT.format(p="?"), (account_id,)).fetchone()
            return Usage(0, 0) if row is None else Usage(int(row[0]), int(row[1]))
        return await self._quick(usage)

    async def known_uidls(self, account_id: int) -> set[str]:
        """Every UIDL ever ingested for the account."""
        def known() -> set[str]:
            return {r[0] for r in self._db.execute("SELECT uidl FROM uidls WHERE account_id = ?",
                                                   (account_id,))}
        return await self._run(known)

    async def uidl_rows(self, account_id: int) -> dict[str, float | None]:
        """Every UIDL ever ingested for the account -> epoch seconds of ingest, or None when it
        is gone upstream (`known_uidls` and `fetched_at` in one read, for a sync)."""
        def rows() -> dict[str, float | None]:
            return dict(self._db.execute(UIDL_ROWS.format(p="?"), (account_id,)).fetchall())
        return await self._run(rows)

    async def uidl_digests(self, account_id: int,
                           uidls: Collection[str]) -> dict[str, tuple[bytes | None, float]]:
        """UIDL -> (content digest or None, epoch seconds of ingest), for those of `uidls` the
        account has."""
        wanted = set(uidls)

        def digests() -> dict[str, tuple[bytes | None, float]]:
            return {uidl: (None if digest is None else bytes(digest), at) for uidl, digest, at
                    in self._db.execute("SELECT uidl, digest, fetched_at FROM uidls "
                                        "WHERE account_id = ?", (account_id,))
                    if uidl in wanted}
        return await self._run(digests) if wanted else {}

    def _record_uidls(self, account_id: int, rows: Sequence[tuple[str, bytes, float]]) -> None:
        with transaction(self._db):
            self._db.executemany(RECORD_UIDL.format(p="?"),
                                 [(account_id, uidl, at, digest) for uidl, digest, at in rows])

    async def record_uidls(self, account_id: int, rows: Sequence[tuple[str, bytes, float]]) -> None:
        """(UIDL, digest, fetched_at): a stored message's UIDL, upstream now, with no new
        message (a UIDL renamed, or listed again on the same message)."""
        if rows:
            await self._run(self._record_uidls, account_id, list(rows))

    async def uidl_messages(self, account_id: int,
                            uidls: Collection[str]) -> dict[str, MessageMeta]:
        """UIDL -> the newest stored message ingested under it, for those of `uidls` that have
        one (the user may have expunged it)."""
        wanted = set(uidls)

        def found() -> dict[str, MessageMeta]:
            rows = self._db.execute(UIDL_MESSAGES.format(p="?") + "ORDER BY m.id", (account_id,))
            return {row[8]: meta(row) for row in rows if row[8] in wanted}
        return await self._run(found) if wanted else {}

    def _set_uidl_digests(self, account_id: int, rows: Sequence[tuple[str, bytes]]) -> None:
        with transaction(self._db):
            self._db.executemany(SET_DIGEST.format(p="?"),
                                 [(digest, account_id, uidl) for uidl, digest in rows])

    async def set_uidl_digests(self, account_id: int, rows: Sequence[tuple[str, bytes]]) -> None:
        """(UIDL, digest) of rows stored without one (before schema step 9)."""
        if rows:
            await self._run(self._set_uidl_digests, account_id, list(rows))

    async def fetched_at(self, account_id: int) -> dict[str, float]:
        """UIDL -> epoch seconds of ingest, for the UIDLs not yet deleted upstream."""
        def fetched() -> dict[str, float]:
            return dict(self._db.execute(
                "SELECT uidl, fetched_at FROM uidls WHERE account_id = ? AND deleted_upstream_at IS NULL",
                (account_id,)).fetchall())
        return await self._run(fetched)

    def _mark_deleted_upstream(self, account_id: int, uidls: Sequence[str]) -> None:
        now = time.time()
        with transaction(self._db):
            self._db.executemany("UPDATE uidls SET deleted_upstream_at = ? WHERE account_id = ? "
                                 "AND uidl = ?", [(now, account_id, u) for u in uidls])

    async def mark_deleted_upstream(self, account_id: int, uidls: Sequence[str]) -> None:
        """Record that a DELE of these UIDLs took effect (after a successful QUIT)."""
        await self._run(self._mark_deleted_upstream, account_id, list(uidls))

    @contextlib.asynccontextmanager
    async def fetch_lease(self, upstream: str, user: str) -> AsyncIterator[bool]:
        """Always granted: one process per SQLite file (the fetcher's own lock covers it)."""
        yield True

    # ---- maintenance ----------------------------------------------------------------------------

    def _flush(self) -> None:
        for path in (self.path + "-wal", self.path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def flush(self) -> None:
        """Make every commit so far survive a power loss (fsync), e.g. before DELE upstream."""
        if self.path != ":memory:":
            await self._run(self._flush)

    def _size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    async def size_bytes(self) -> int:
        """Bytes on disk (database plus WAL)."""
        return await self._quick(self._size_bytes)   # two stat() calls, after every sync

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await trio.to_thread.run_sync(self._db.close, limiter=self._limiter)


async def open_sqlite(path: str, key_ring: KeyRing | None = None) -> SqliteStore:
    """Open (creating and migrating as needed) the SQLite store at `path`."""
    db = await trio.to_thread.run_sync(open_db, path, key_ring)
    ids_key = await trio.to_thread.run_sync(objectid_key, db)
    digest_key = await trio.to_thread.run_sync(uidl_digest_key, db, key_ring)
    return SqliteStore(db, path, key_ring, objectid_key=ids_key, uidl_digest_key=digest_key)
