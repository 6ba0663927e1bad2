"""The PostgreSQL database itself: connection pool, the schema and its migrations, the key check.

Theory of operation: `open_pool(url, ring, password, size)` runs in a worker thread before the
store object exists. On one plain connection (so a refused connection or a wrong password is
reported at once, with libpq's own words) it migrates the schema and checks the key, each in one
transaction; then it opens a `psycopg_pool.ConnectionPool` whose connections are checked before
each use, so after a database restart the first call reconnects instead of failing on a dead
socket.

Migrations: `MIGRATIONS[i]` brings the schema from version i to i+1. All missing steps run in ONE
transaction that first takes `pg_advisory_xact_lock(SCHEMA_LOCK)`, so replicas starting together
queue on the lock and the second finds the work done (DDL is transactional in PostgreSQL: a
failed step leaves nothing behind). A database newer than this program is refused. Never edit a
released migration; append one.

Key check: as in SQLite (`_schema.py`), the `meta` row `key_check` holds random bytes sealed with
the configured key ring, so a store opened with the wrong key, or an encrypted store opened
without one, is refused up front (`StoreKeyError`).

Bodies and credentials are sealed by `crypto.seal` before they are sent: the server only ever
sees ciphertext when a key ring is configured. Their columns use `STORAGE EXTERNAL` (no TOAST
compression: the records are already compressed or encrypted).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import psycopg
import psycopg.conninfo
import psycopg_pool

from . import crypto
from ._accounts_sql import RECOUNT_USAGE
from ._pg_deadline import checked, tcp_options
from .base import StoreError, StoreFailure
from .crypto import KeyRing, StoreKeyError

__all__ = ["SCHEMA_VERSION", "SCHEMA_LOCK", "MIGRATIONS", "migrate", "check_key", "open_pool",
           "CONNECT_TIMEOUT_S", "POOL_TIMEOUT_S", "redact", "one_line", "objectid_key",
           "uidl_digest_key"]

SCHEMA_LOCK = 0x6D61_696C_7072_0001   # pg_advisory_xact_lock key: "mailpr" + schema
CONNECT_TIMEOUT_S = 10
OBJECTID_KEY_BYTES = 32
POOL_TIMEOUT_S = 5.0                  # waiting for a connection before StoreUnavailable

Conn = psycopg.Connection[Any]


def _v1_initial(c: Conn) -> None:
    c.execute("""
        CREATE TABLE meta(key TEXT PRIMARY KEY, value BYTEA NOT NULL);
        CREATE TABLE accounts(
            id BIGSERIAL PRIMARY KEY,
            upstream TEXT NOT NULL,
            username TEXT NOT NULL,
            last_uidvalidity BIGINT NOT NULL DEFAULT 0,
            credentials BYTEA,
            UNIQUE(upstream, username));
        CREATE TABLE mailboxes(
            id BIGSERIAL PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            special_use TEXT,
            uidvalidity BIGINT NOT NULL,
            uidnext BIGINT NOT NULL DEFAULT 1,
            highest_modseq BIGINT NOT NULL DEFAULT 1,
            subscribed BOOLEAN NOT NULL DEFAULT TRUE,
            recent_uid BIGINT NOT NULL DEFAULT 1,      -- \\Recent floor (base.py, issue 13)
            changes_floor BIGINT NOT NULL DEFAULT 0,   -- change log pruned below this MODSEQ
            UNIQUE(account_id, name));
        CREATE TABLE bodies(
            id BIGSERIAL PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            size BIGINT NOT NULL,
            data BYTEA NOT NULL,
            cache BYTEA);
        ALTER TABLE bodies ALTER COLUMN data SET STORAGE EXTERNAL;
        ALTER TABLE bodies ALTER COLUMN cache SET STORAGE EXTERNAL;
        CREATE TABLE messages(
            id BIGSERIAL PRIMARY KEY,
            mailbox_id BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
            uid BIGINT NOT NULL,
            internaldate BIGINT NOT NULL,
            tz_minutes INTEGER NOT NULL,
            flags TEXT NOT NULL,
            modseq BIGINT NOT NULL,
            body_id BIGINT NOT NULL REFERENCES bodies(id),
            pop3_uidl TEXT,
            UNIQUE(mailbox_id, uid));
        CREATE INDEX messages_body ON messages(body_id);
        CREATE TABLE uidls(
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            uidl TEXT NOT NULL,
            fetched_at DOUBLE PRECISION NOT NULL,
            deleted_upstream_at DOUBLE PRECISION,
            PRIMARY KEY(account_id, uidl));
        CREATE TABLE changes(
            id BIGSERIAL PRIMARY KEY,
            account_id BIGINT NOT NULL,
            mailbox_id BIGINT NOT NULL,
            modseq BIGINT NOT NULL,
            kind TEXT NOT NULL,
            uid BIGINT NOT NULL,
            origin TEXT NOT NULL);
        CREATE INDEX changes_mailbox ON changes(mailbox_id, modseq);
    """)


def _v2_subscriptions(c: Conn) -> None:
    """Issue 17: subscriptions are a set of names, not a mailbox column (see `_schema.py`)."""
    c.execute("""
        CREATE TABLE subscriptions(
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            PRIMARY KEY(account_id, name));
        INSERT INTO subscriptions(account_id, name)
            SELECT account_id, name FROM mailboxes WHERE subscribed;
        ALTER TABLE mailboxes DROP COLUMN subscribed;
    """)


def _v3_body_collection(c: Conn) -> None:
    """Bodies of expunged messages collected across replicas (`_pg_bodies.py`)."""
    c.execute("""
        CREATE TABLE replicas(
            origin TEXT PRIMARY KEY,
            seen_at TIMESTAMPTZ NOT NULL,      -- lease, renewed by every ack
            horizon BIGINT NOT NULL);          -- xids below it: finished and delivered there
        CREATE TABLE pins(
            origin TEXT NOT NULL REFERENCES replicas(origin) ON DELETE CASCADE,
            body_id BIGINT NOT NULL,
            PRIMARY KEY(origin, body_id));
        CREATE TABLE orphans(
            body_id BIGINT PRIMARY KEY,
            xid BIGINT NOT NULL);              -- the transaction that removed its last message
        CREATE INDEX orphans_xid ON orphans(xid);
        INSERT INTO orphans(body_id, xid) SELECT b.id, 0 FROM bodies b
            WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = b.id);
    """)


def _v4_sync_status(c: Conn) -> None:
    """Issue 19. Per account: the Unix time of the last successful sync, the last failed sync's
    reason (label and sanitized message, cleared by a success) and when it failed."""
    c.execute("""
        ALTER TABLE accounts ADD COLUMN last_sync_at DOUBLE PRECISION;
        ALTER TABLE accounts ADD COLUMN last_error TEXT;
        ALTER TABLE accounts ADD COLUMN last_error_at DOUBLE PRECISION;
    """)


def _v5_sort_fields(c: Conn) -> None:
    """Issue 17. Per body, the sealed sort-fields blob (`base.py`); bodies stored before get it
    at their first SORT or THREAD (`Store.set_sort_fields`)."""
    c.execute("""
        ALTER TABLE bodies ADD COLUMN sort_fields BYTEA;
        ALTER TABLE bodies ALTER COLUMN sort_fields SET STORAGE EXTERNAL;
    """)


def _v6_usage_counters(c: Conn) -> None:
    """Issue 17. Per account, the bytes and number of its messages, kept by a trigger in the
    transaction of every insert and delete of a message row (`_accounts_sql.py`)."""
    c.execute("""
        ALTER TABLE accounts ADD COLUMN usage_bytes BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE accounts ADD COLUMN usage_messages BIGINT NOT NULL DEFAULT 0;
        CREATE FUNCTION messages_count_usage() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            msg messages;
            delta INTEGER := 1;
        BEGIN
            IF TG_OP = 'INSERT' THEN
                msg := NEW;
            ELSE
                msg := OLD;
                delta := -1;
            END IF;
            UPDATE accounts SET
                usage_bytes = usage_bytes
                    + delta * coalesce((SELECT size FROM bodies WHERE id = msg.body_id), 0),
                usage_messages = usage_messages + delta
            WHERE id = (SELECT account_id FROM mailboxes WHERE id = msg.mailbox_id);
            RETURN NULL;
        END $$;
        CREATE TRIGGER messages_usage AFTER INSERT OR DELETE ON messages
            FOR EACH ROW EXECUTE FUNCTION messages_count_usage();
    """)
    c.execute(RECOUNT_USAGE)


def _v7_save_date(c: Conn) -> None:
    """Issue 17, SAVEDATE (RFC 8514): the Unix time a message was saved into its mailbox (APPEND,
    COPY/MOVE target, ingest). Messages stored before this step take their internal date."""
    c.execute("""
        ALTER TABLE messages ADD COLUMN saved_at BIGINT NOT NULL DEFAULT 0;
        UPDATE messages SET saved_at = internaldate;
    """)


def _v8_objectid_key(c: Conn) -> None:
    """Issue 17, OBJECTID (RFC 8474 7): the random secret MAILBOXID/EMAILID are keyed hashes
    under (`gateway/imapd/_objectid.py`), so they reveal no row counts. `gateway migrate`
    replaces it with the SQLite store's, so the ids stay the same."""
    c.execute("INSERT INTO meta(key, value) VALUES ('objectid_key', %s) ON CONFLICT DO NOTHING",
              (os.urandom(OBJECTID_KEY_BYTES),))


def _v9_uidl_digests(c: Conn) -> None:
    """A POP3 message's content digest beside its UIDL (`gateway/sync_identity.py`), as in the
    SQLite store's step 9."""
    c.execute("ALTER TABLE uidls ADD COLUMN digest BYTEA")


MIGRATIONS: list[Callable[[Conn], None]] = [_v1_initial, _v2_subscriptions, _v3_body_collection,
                                            _v4_sync_status, _v5_sort_fields, _v6_usage_counters,
                                            _v7_save_date, _v8_objectid_key, _v9_uidl_digests]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(c: Conn) -> int:
    """Apply the missing migrations in one transaction under the schema lock."""
    with c.transaction():
        c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        c.execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
        row = c.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            c.execute("INSERT INTO schema_version VALUES (0)")
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"store schema version {version} is newer than this program "
                             f"({SCHEMA_VERSION}); upgrade mailproxy")
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](c)
        c.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


def uidl_digest_key(c: Conn, ring: KeyRing | None) -> bytes:
    """The store's secret for POP3 content digests, as the SQLite store's `uidl_digest_key`
    (under the schema lock: replicas starting together make one)."""
    with c.transaction():
        c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        row = c.execute("SELECT value FROM meta WHERE key = 'uidl_digest_key'").fetchone()
        secret = crypto.digest_secret(None if row is None else bytes(row[0]), ring)
        c.execute("INSERT INTO meta(key, value) VALUES ('uidl_digest_key', %s) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                  (crypto.seal_digest_secret(secret, ring),))
    return secret


def objectid_key(c: Conn) -> bytes:
    """The store's OBJECTID secret (schema step 8)."""
    row = c.execute("SELECT value FROM meta WHERE key = 'objectid_key'").fetchone()
    if row is None:
        raise StoreError("store has no objectid_key: its schema was not migrated")
    return bytes(row[0])


def check_key(c: Conn, ring: KeyRing | None, where: str) -> None:
    """Refuse a store whose encryption state does not match the configuration."""
    aad = b"store:key_check"
    with c.transaction():
        c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        row = c.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if ring is None:
            if row is not None:
                raise StoreKeyError(f"{where} is encrypted: configure gateway.key_file")
            return
        if row is not None:
            crypto.unseal(row[0], aad, ring, "store key check")
        # Re-sealed under the newest key, so dropping an old key after rotation keeps it readable.
        c.execute("INSERT INTO meta(key, value) VALUES ('key_check', %s) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                  (crypto.seal(os.urandom(16), aad, ring),))


def one_line(exc: BaseException) -> str:
    """libpq's messages span lines (a hint on the next); errors here are one line."""
    return " ".join(str(exc).split())


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, db = info.get("host", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', '')}/{db}"


def with_idle_transaction_bound(url: str, seconds: float) -> str:
    """`url` whose connections end a transaction left idle for `seconds` (the server's
    `idle_in_transaction_session_timeout`, added to the URL's own `options`)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    bound = f"-c idle_in_transaction_session_timeout={max(1, round(seconds * 1000))}"
    info["options"] = f"{info.get('options') or ''} {bound}".strip()
    return psycopg.conninfo.make_conninfo("", **info)


def open_pool(url: str, ring: KeyRing | None, password: str | None, size: int,
              idle_transaction_s: float,
              query_timeout_s: float) -> tuple[psycopg_pool.ConnectionPool[Any], bytes, bytes]:
    """Open the pool, migrate, check the key; returns the pool and the store's OBJECTID and digest secrets.
    Raises StoreFailure when the server cannot be used.

    The pool's transactions are a few statements sent back to back by one thread: one left idle
    for `idle_transaction_s` (the replica lease) belongs to a process that is frozen or cut off
    from the network without the server noticing (no FIN, as when a node is lost), and its row
    locks would stall every other replica's writes to those mailboxes until TCP gave up (hours):
    the server ends it and its locks go (the transaction is rolled back: nothing half done).
    Pooled connections are checked under the calling store call's deadline, with TCP keepalive
    and TCP_USER_TIMEOUT set from `query_timeout_s` (`_pg_deadline.py`)."""
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "mailproxy",
                              **tcp_options(query_timeout_s)}
    if password is not None:
        kwargs["password"] = password
    try:
        pooled_url = with_idle_transaction_bound(url, idle_transaction_s)
    except psycopg.Error as exc:
        raise StoreFailure(one_line(exc)) from exc
    try:   # one plain connection first: a clear error at once (refused, bad password...)
        with psycopg.connect(url, **kwargs) as c:
            migrate(c)
            check_key(c, ring, redact(url))
            ids_key = objectid_key(c)
            digest_key = uidl_digest_key(c, ring)
    except psycopg.Error as exc:
        raise StoreFailure(one_line(exc)) from exc
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        pooled_url, kwargs=kwargs, min_size=1, max_size=size, open=False, timeout=POOL_TIMEOUT_S,
        check=checked, name="mailproxy-store")
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except psycopg_pool.PoolTimeout as exc:
        pool.close()
        raise StoreFailure(f"cannot connect to {redact(url)} within {CONNECT_TIMEOUT_S}s") from exc
    return pool, ids_key, digest_key
