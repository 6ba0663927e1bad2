"""The shared Store: PostgreSQL, for several gateway replicas (or processes) on one database.

Theory of operation: every call is one transaction on a pooled connection, run in a worker
thread under the account's share of the pool and the `gateway.store_query_timeout` bound, with
its failures mapped to `StoreUnavailable`/`StoreFailure`: the `PgCalls` base in `_pg_calls.py`.

Durability: a COMMIT is durable when it returns (the server's `synchronous_commit`), so `flush()`
has nothing to do.

The schema, migrations, pool and key check are `_pg_schema.py`; message operations are the
`PgMessageOps` mixin in `_pg_messages.py` (see its docstring for locking and NOTIFY), mailbox
operations the `PgMailboxOps` mixin in `_pg_mailboxes.py`; the cross-replica change feed
(`follow_changes`) is `_pg_notify.py`. This module is the store object: accounts and
credentials, POP3 ingest, retention bookkeeping and fetch leases.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
import time
from typing import Any, AsyncIterator, Collection, Sequence

import psycopg
import psycopg_pool
import trio

from . import crypto
from ._accounts_sql import USAGE_SELECT, delete_statements, record_sync, summary_select
from ._pg_bodies import DEFAULT_TIMING, ReplicaTiming
from ._pg_calls import PgCalls, default_per_account
from ._pg_deadline import DEFAULT_QUERY_TIMEOUT_S, tcp_options
from ._pg_mailboxes import PgMailboxOps
from ._pg_notify import ChangeFollower, Feed
from ._pg_schema import CONNECT_TIMEOUT_S, SCHEMA_VERSION, one_line, open_pool, redact
from ._rows import from_date, meta, save_time
from ._uidls_sql import RECORD_UIDL, REUSE_UIDL, SET_DIGEST, UIDL_MESSAGES, UIDL_ROWS
from .base import (
    DEFAULT_MAILBOXES,
    INBOX,
    Account,
    AccountSummary,
    ChangeKind,
    IngestItem,
    MessageMeta,
    StoreUnavailable,
    Usage,
)
from .crypto import KeyRing, StoreKeyError

__all__ = ["PostgresStore", "open_postgres", "SCHEMA_VERSION", "DEFAULT_POOL_SIZE",
           "default_per_account"]

DEFAULT_POOL_SIZE = 10
FETCH_LEASE_SPACE = 0x6D70_0001   # first key of pg_try_advisory_lock(int4, int4): fetch leases
Conn = psycopg.Connection[Any]


class _StaleConnection(Exception):
    """A pooled connection turned out dead before the transaction's COMMIT (`_call`)."""


class PostgresStore(PgMailboxOps):
    """See the module docstring. Create with `await open_postgres(url, key_ring, ...)`."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], url: str, ring: KeyRing | None,
                 size: int, password: str | None = None,
                 timing: ReplicaTiming = DEFAULT_TIMING, *, objectid_key: bytes,
                 uidl_digest_key: bytes, per_account: int | None = None,
                 query_timeout: float = DEFAULT_QUERY_TIMEOUT_S):
        PgCalls.__init__(self, pool, size, per_account, query_timeout)
        self.objectid_key = objectid_key
        self.uidl_digest_key = uidl_digest_key
        self._url, self._password = url, password
        self.url = redact(url)
        self._ring = ring
        self.origin = secrets.token_hex(6)
        self.timing = timing
        self.follower: ChangeFollower | None = None

    async def follow_changes(self, feed: Feed,
                             task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Hand the changes other processes make to `feed`, until cancelled (`_pg_notify.py`);
        with `nursery.start`, returns once listening and registered as a replica."""
        self.follower = ChangeFollower(self._url, self._password, self.origin, self._run, feed,
                                       self.timing, tcp_options(self._deadlines.timeout_s))
        await self.follower.run(task_status)

    # ---- accounts and credentials ----------------------------------------------------------------

    def _ensure_account(self, c: Conn, upstream: str, user: str) -> Account:
        row = c.execute("INSERT INTO accounts(upstream, username) VALUES (%s, %s) "
                        "ON CONFLICT (upstream, username) DO NOTHING RETURNING id",
                        (upstream, user)).fetchone()
        if row is not None:
            for name, special_use in DEFAULT_MAILBOXES.items():
                self._new_mailbox(c, row[0], name, special_use)
            c.cursor().executemany("INSERT INTO subscriptions(account_id, name) VALUES (%s, %s)",
                                   [(row[0], name) for name in DEFAULT_MAILBOXES])
            return Account(row[0], upstream, user)
        found = self._get_account(c, upstream, user)
        assert found is not None
        return found

    async def ensure_account(self, upstream: str, user: str) -> Account:
        """The account for (upstream, user), created with the default mailboxes on first use."""
        account: Account = await self._run(self._ensure_account, upstream, user)
        return account

    @staticmethod
    def _get_account(c: Conn, upstream: str, user: str) -> Account | None:
        row = c.execute("SELECT id FROM accounts WHERE upstream = %s AND username = %s",
                        (upstream, user)).fetchone()
        return None if row is None else Account(row[0], upstream, user)

    async def get_account(self, upstream: str, user: str) -> Account | None:
        found: Account | None = await self._run(self._get_account, upstream, user)
        return found

    async def save_credentials(self, account_id: int, blob: bytes) -> None:
        """Keep `blob` (encrypted; refused with StoreKeyError when no key ring is configured)."""
        if self._ring is None:
            raise StoreKeyError("credentials are only stored encrypted: configure gateway.key_file")
        sealed = crypto.seal(blob, f"acct:{account_id}:credentials".encode(), self._ring)
        await self._run(lambda c: c.execute("UPDATE accounts SET credentials = %s WHERE id = %s",
                                            (sealed, account_id)))

    async def load_credentials(self, account_id: int) -> bytes | None:
        row = await self._run(lambda c: c.execute(
            "SELECT credentials FROM accounts WHERE id = %s", (account_id,)).fetchone())
        if row is None or row[0] is None:
            return None
        return crypto.unseal(bytes(row[0]), f"acct:{account_id}:credentials".encode(), self._ring,
                             f"credentials of account {account_id}")

    async def accounts_with_credentials(self) -> list[Account]:
        """Accounts whose password is stored (encrypted) for background polling."""
        rows = await self._run(lambda c: c.execute(
            "SELECT id, upstream, username FROM accounts WHERE credentials IS NOT NULL "
            "ORDER BY id").fetchall())
        return [Account(*row) for row in rows]

    @property
    def can_store_credentials(self) -> bool:
        return self._ring is not None

    async def account_summaries(self) -> list[AccountSummary]:
        rows = await self._run(lambda c: c.execute(
            summary_select("username")).fetchall())
        return [AccountSummary(Account(*row[:3]), int(row[3]), int(row[4]), *row[5:])
                for row in rows]

    async def record_sync(self, account_id: int, error: str | None) -> None:
        statement, params = record_sync("%s", account_id, error, time.time())
        await self._run(lambda c: c.execute(statement, params))

    async def delete_account(self, account_id: int) -> None:
        def delete(c: Conn) -> None:
            with c.transaction():
                for statement in delete_statements("%s"):
                    c.execute(statement, (account_id,))

        await self._run(delete)

    # ---- ingest and retention -------------------------------------------------------------------

    def _ingest_many(self, c: Conn, account_id: int,
                     items: Sequence[IngestItem]) -> list[int | None]:
        inbox = self._mailbox_id(c, account_id, INBOX, lock=True)
        # A UIDL another replica is committing right now blocks here until that commit, then
        # conflicts: never ingested twice.
        now = time.time()
        inserted = {r[0] for r in c.execute(
            "INSERT INTO uidls(account_id, uidl, fetched_at, digest) "
            "SELECT %s, u, %s, d FROM unnest(%s::text[], %s::bytea[]) AS t(u, d) "
            "ON CONFLICT (account_id, uidl) DO NOTHING RETURNING uidl",
            (account_id, now, [item.uidl for item in items], [item.digest for item in items]))}
        for item in items:   # new mail under a UIDL gone upstream (RFC 1939 7)
            if item.reused and item.uidl not in inserted and c.execute(
                    REUSE_UIDL.format(p="%s"), (now, item.digest, account_id, item.uidl)).rowcount:
                inserted.add(item.uidl)
        fresh: list[IngestItem] = []
        for item in items:
            if item.uidl in inserted:
                inserted.discard(item.uidl)   # a UIDL listed twice in one batch: the first wins
                fresh.append(item)
        if not fresh:
            return [None] * len(items)
        body_ids = self._body_ids(c, len(fresh))
        self._insert_bodies(c, account_id, [(bid, item.body, item.cache, item.sort_fields)
                                            for bid, item in zip(body_ids, fresh, strict=True)])
        first = self._take_uids(c, inbox, len(fresh))
        modseq = self._bump(c, inbox)
        rows, saved = [], save_time()
        for offset, (item, bid) in enumerate(zip(fresh, body_ids, strict=True)):
            epoch, tz = from_date(item.internaldate)
            rows.append((inbox, first + offset, epoch, tz, "", modseq, bid, item.uidl, saved))
        c.cursor().executemany(
            "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
            "body_id, pop3_uidl, saved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        self._log(c, account_id, inbox, modseq, ChangeKind.APPEND, [r[1] for r in rows])
        uid_of = {id(item): row[1] for item, row in zip(fresh, rows, strict=True)}
        return [uid_of.get(id(item)) for item in items]

    async def ingest_many(self, account_id: int, items: Sequence[IngestItem]) -> list[int | None]:
        """Add POP3 messages to INBOX in ONE transaction; per item its new UID, or None when its
        UIDL was ingested before (ever, even if expunged since)."""
        if not items:
            return []
        return list(await self._run(self._ingest_many, account_id, list(items)))

    async def ingest(self, account_id: int, uidl: str, body: bytes, internaldate: dt.datetime,
                     cache: bytes | None = None) -> int | None:
        return (await self.ingest_many(account_id, [IngestItem(uidl, body, internaldate, cache)]))[0]

    async def usage(self, account_id: int) -> Usage:
        """What the account's messages hold (RFC 9208 STORAGE and MESSAGE: every copy counts):
        its counters (`_accounts_sql.py`)."""
        row = await self._run(lambda c: c.execute(USAGE_SELECT.format(p="%s"),
                                                  (account_id,)).fetchone(), read=True)
        return Usage(0, 0) if row is None else Usage(int(row[0]), int(row[1]))

    async def known_uidls(self, account_id: int) -> set[str]:
        """Every UIDL ever ingested for the account."""
        rows = await self._run(lambda c: c.execute(
            "SELECT uidl FROM uidls WHERE account_id = %s", (account_id,)).fetchall())
        return {r[0] for r in rows}

    async def fetched_at(self, account_id: int) -> dict[str, float]:
        """UIDL -> epoch seconds of ingest, for the UIDLs not yet deleted upstream."""
        rows = await self._run(lambda c: c.execute(
            "SELECT uidl, fetched_at FROM uidls WHERE account_id = %s "
            "AND deleted_upstream_at IS NULL", (account_id,)).fetchall())
        return dict(rows)

    async def uidl_rows(self, account_id: int) -> dict[str, float | None]:
        """Every UIDL ever ingested for the account -> epoch seconds of ingest, or None when it
        is gone upstream (`known_uidls` and `fetched_at` in one read, for a sync)."""
        rows = await self._run(lambda c: c.execute(
            UIDL_ROWS.format(p="%s"), (account_id,)).fetchall())
        return dict(rows)

    async def uidl_digests(self, account_id: int,
                           uidls: Collection[str]) -> dict[str, tuple[bytes | None, float]]:
        """UIDL -> (content digest or None, epoch seconds of ingest), for those of `uidls` the
        account has."""
        if not uidls:
            return {}
        rows = await self._run(lambda c: c.execute(
            "SELECT uidl, digest, fetched_at FROM uidls WHERE account_id = %s "
            "AND uidl = ANY(%s)", (account_id, list(uidls))).fetchall())
        return {uidl: (None if digest is None else bytes(digest), at) for uidl, digest, at in rows}

    async def record_uidls(self, account_id: int, rows: Sequence[tuple[str, bytes, float]]) -> None:
        """(UIDL, digest, fetched_at): a stored message's UIDL, upstream now, with no new
        message (a UIDL renamed, or listed again on the same message)."""
        if rows:
            values = [(account_id, uidl, at, digest) for uidl, digest, at in rows]
            await self._run(lambda c: c.cursor().executemany(RECORD_UIDL.format(p="%s"), values))

    async def uidl_messages(self, account_id: int,
                            uidls: Collection[str]) -> dict[str, MessageMeta]:
        """UIDL -> the newest stored message ingested under it, for those of `uidls` that have
        one (the user may have expunged it)."""
        if not uidls:
            return {}
        rows = await self._run(lambda c: c.execute(
            UIDL_MESSAGES.format(p="%s") + "AND m.pop3_uidl = ANY(%s) ORDER BY m.id",
            (account_id, list(uidls))).fetchall(), read=True)
        return {row[8]: meta(row) for row in rows}

    async def set_uidl_digests(self, account_id: int, rows: Sequence[tuple[str, bytes]]) -> None:
        """(UIDL, digest) of rows stored without one (before schema step 9)."""
        if rows:
            values = [(digest, account_id, uidl) for uidl, digest in rows]
            await self._run(lambda c: c.cursor().executemany(SET_DIGEST.format(p="%s"), values))

    async def mark_deleted_upstream(self, account_id: int, uidls: Sequence[str]) -> None:
        """Record that a DELE of these UIDLs took effect (after a successful QUIT)."""
        await self._run(lambda c: c.execute(
            "UPDATE uidls SET deleted_upstream_at = %s WHERE account_id = %s AND uidl = ANY(%s)",
            (time.time(), account_id, list(uidls))))

    def _lease_connection(self, key: int) -> Conn | None:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                  "application_name": "mailproxy-fetch-lease",
                                  **tcp_options(self._deadlines.timeout_s)}
        if self._password is not None:
            kwargs["password"] = self._password
        conn = psycopg.connect(self._url, **kwargs)
        with self._deadlines.call() as watch:
            watch.use(conn)
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                   (FETCH_LEASE_SPACE, key)).fetchone()
            except psycopg.Error:
                conn.close()
                raise
        if row is None or not row[0]:
            conn.close()
            return None
        return conn

    @contextlib.asynccontextmanager
    async def fetch_lease(self, upstream: str, user: str) -> AsyncIterator[bool]:
        """One fetcher per upstream mailbox across every process on the database: a
        session-level advisory lock on a connection of its own, held for the block. PostgreSQL
        drops it when that connection ends, so a replica that dies (SIGKILL, OOM, lost node)
        releases it; a live one unlocks before it closes (`_release_lease`). The lock key is a
        32-bit hash of (upstream, user), taken before the POP3 login (there may be no account
        yet); two mailboxes sharing a hash only ever make one of them skip a poll."""
        digest = hashlib.sha256(f"{upstream}\0{user}".encode()).digest()
        key = int.from_bytes(digest[:4], "big", signed=True)
        try:
            conn = await trio.to_thread.run_sync(self._lease_connection, key)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"store unavailable: {one_line(exc)}") from exc
        try:
            yield conn is not None
        finally:
            if conn is not None:   # shielded: a cancelled sync must still give it back
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._release_lease, conn, key)

    def _release_lease(self, conn: Conn, key: int) -> None:
        """Unlock, then close: the server drops a session's locks only when it has seen the
        connection end, a moment after the client closed it, and the next lease (this
        process's next sync of the account) would be refused in between. A connection that
        fails the unlock is closed all the same (its end releases the lock)."""
        try:
            with self._deadlines.call() as watch:
                watch.use(conn)
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (FETCH_LEASE_SPACE, key))
        except psycopg.Error:
            pass
        finally:
            conn.close()

    # ---- maintenance ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Nothing to do: a PostgreSQL COMMIT is durable when it returns."""

    async def size_bytes(self) -> int:
        """Bytes the store's tables and indexes take in the database."""
        row = await self._run(lambda c: c.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
            "AND c.relkind = 'r' AND c.relname = ANY(%s)",
            (["meta", "accounts", "mailboxes", "bodies", "messages", "uidls", "changes",
              "orphans", "replicas", "pins"],)
        ).fetchone())
        return int(row[0])

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await trio.to_thread.run_sync(pool.close)
            await trio.to_thread.run_sync(self._deadlines.close)


async def open_postgres(url: str, key_ring: KeyRing | None = None, *, password: str | None = None,
                        pool_size: int = DEFAULT_POOL_SIZE,
                        timing: ReplicaTiming = DEFAULT_TIMING,
                        per_account: int | None = None,
                        query_timeout: float = DEFAULT_QUERY_TIMEOUT_S) -> PostgresStore:
    """Open the store at `url` (`postgresql://...`), migrating the schema as needed.
    `per_account`: connections one account may hold at once (default: half the pool);
    `query_timeout`: the bound on each store call (`_pg_deadline.py`)."""
    timing.check()
    pool, ids_key, digest_key = await trio.to_thread.run_sync(
        open_pool, url, key_ring, password, pool_size, timing.lease, query_timeout)
    return PostgresStore(pool, url, key_ring, pool_size, password, timing, objectid_key=ids_key,
                         uidl_digest_key=digest_key, per_account=per_account, query_timeout=query_timeout)
