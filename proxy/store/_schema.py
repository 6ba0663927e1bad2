"""The SQLite file itself: connection settings, transactions, the schema and its migrations.

Theory of operation: `open_db(path, ring)` runs in a worker thread before the store object
exists. It creates the file owner-only (mode 0600: it holds mail), opens it in autocommit mode
(`isolation_level=None`: transactions are explicit) and sets `journal_mode=WAL`,
`synchronous=NORMAL`, `foreign_keys=ON` and `busy_timeout` (see `sqlite.py` for what WAL +
NORMAL guarantee). Then it migrates the schema and checks the key.

`transaction(db)` is `BEGIN IMMEDIATE ... COMMIT` (ROLLBACK on any exception): the write lock is
taken up front, so two processes sharing the file queue on `busy_timeout` instead of failing on a
lock upgrade. Every write of the store runs inside one.

Schema changes are migrations: `MIGRATIONS[i]` brings the schema from version i to i+1, each in
its own transaction, recorded in `schema_version`; a process that finds the step already done by
another one skips it, and a file newer than this program is refused. Never edit a released
migration; append one.

Key check: the `meta` row `key_check` holds random bytes sealed with the configured key ring, so
a store opened with the wrong key, or an encrypted store opened without one, is refused up front
(`StoreKeyError`) instead of failing on the first message.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from contextlib import contextmanager
from typing import Callable, Iterator

from . import crypto
from ._accounts_sql import RECOUNT_USAGE
from .base import StoreError
from .crypto import KeyRing, StoreKeyError

__all__ = ["BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "MIGRATIONS", "connect", "transaction", "migrate",
           "check_key", "open_db", "objectid_key", "uidl_digest_key"]

BUSY_TIMEOUT_MS = 30_000
OBJECTID_KEY_BYTES = 32


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated DDL inside the caller's transaction (executescript() would COMMIT)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1_initial(db: sqlite3.Connection) -> None:
    _script(db, """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE accounts(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            upstream TEXT NOT NULL,
            user TEXT NOT NULL,
            last_uidvalidity INTEGER NOT NULL DEFAULT 0,
            credentials BLOB,
            UNIQUE(upstream, user));
        CREATE TABLE mailboxes(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            special_use TEXT,
            uidvalidity INTEGER NOT NULL,
            uidnext INTEGER NOT NULL DEFAULT 1,
            highest_modseq INTEGER NOT NULL DEFAULT 1,
            subscribed INTEGER NOT NULL DEFAULT 1,
            UNIQUE(account_id, name));
        CREATE TABLE bodies(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            size INTEGER NOT NULL,
            data BLOB NOT NULL,
            cache BLOB);
        CREATE TABLE messages(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
            uid INTEGER NOT NULL,
            internaldate INTEGER NOT NULL,
            tz_minutes INTEGER NOT NULL,
            flags TEXT NOT NULL,
            modseq INTEGER NOT NULL,
            body_id INTEGER NOT NULL REFERENCES bodies(id),
            pop3_uidl TEXT,
            UNIQUE(mailbox_id, uid));
        CREATE INDEX messages_body ON messages(body_id);
        CREATE TABLE uidls(
            account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            uidl TEXT NOT NULL,
            fetched_at REAL NOT NULL,
            deleted_upstream_at REAL,
            PRIMARY KEY(account_id, uidl)) WITHOUT ROWID;
        CREATE TABLE changes(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id INTEGER NOT NULL,
            mailbox_id INTEGER NOT NULL,
            modseq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            uid INTEGER NOT NULL);
        CREATE INDEX changes_mailbox ON changes(mailbox_id, modseq);
    """)


def _v2_recent_and_pruning(db: sqlite3.Connection) -> None:
    """Issue 13. `recent_uid`: the persistent \\Recent floor (RFC 3501 2.3.2): UIDs below it were
    recent in some session already; existing mailboxes start with nothing recent (not the whole
    mailbox). `changes_floor`: change-log rows below this MODSEQ were pruned."""
    _script(db, """
        ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 1;
        UPDATE mailboxes SET recent_uid = uidnext;
        ALTER TABLE mailboxes ADD COLUMN changes_floor INTEGER NOT NULL DEFAULT 0
    """)


def _v3_subscriptions(db: sqlite3.Connection) -> None:
    """Issue 17. Subscriptions are a set of names, not a mailbox column (RFC 3501 6.3.6, RFC 9051
    6.3.7): DELETE and RENAME leave them alone, and a name may stay subscribed with no mailbox."""
    _script(db, """
        CREATE TABLE subscriptions(
            account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            PRIMARY KEY(account_id, name)) WITHOUT ROWID;
        INSERT INTO subscriptions(account_id, name)
            SELECT account_id, name FROM mailboxes WHERE subscribed;
        ALTER TABLE mailboxes DROP COLUMN subscribed
    """)


def _v4_sync_status(db: sqlite3.Connection) -> None:
    """Issue 19. Per account: the Unix time of the last successful sync, the last failed sync's
    reason (label and sanitized message, cleared by a success) and when it failed."""
    _script(db, """
        ALTER TABLE accounts ADD COLUMN last_sync_at REAL;
        ALTER TABLE accounts ADD COLUMN last_error TEXT;
        ALTER TABLE accounts ADD COLUMN last_error_at REAL
    """)


def _v5_sort_fields(db: sqlite3.Connection) -> None:
    """Issue 17. Per body, the sealed sort-fields blob (`base.py`); bodies stored before get it
    at their first SORT or THREAD (`Store.set_sort_fields`)."""
    db.execute("ALTER TABLE bodies ADD COLUMN sort_fields BLOB")


def _v6_usage_counters(db: sqlite3.Connection) -> None:
    """Issue 17. Per account, the bytes and number of its messages, kept by triggers in the
    transaction of every insert and delete of a message row (`_accounts_sql.py`), so a quota
    check reads one row instead of summing the account's messages."""
    _script(db, """
        ALTER TABLE accounts ADD COLUMN usage_bytes INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE accounts ADD COLUMN usage_messages INTEGER NOT NULL DEFAULT 0
    """)
    for event, row, sign in (("INSERT", "NEW", "+"), ("DELETE", "OLD", "-")):
        db.execute(f"""
            CREATE TRIGGER messages_usage_{event.lower()} AFTER {event} ON messages BEGIN
                UPDATE accounts SET
                    usage_bytes = usage_bytes {sign}
                        coalesce((SELECT size FROM bodies WHERE id = {row}.body_id), 0),
                    usage_messages = usage_messages {sign} 1
                WHERE id = (SELECT account_id FROM mailboxes WHERE id = {row}.mailbox_id);
            END""")
    db.execute(RECOUNT_USAGE)


def _v7_save_date(db: sqlite3.Connection) -> None:
    """Issue 17, SAVEDATE (RFC 8514): the Unix time a message was saved into its mailbox (APPEND,
    COPY/MOVE target, ingest). Messages stored before this step take their internal date."""
    _script(db, """
        ALTER TABLE messages ADD COLUMN saved_at INTEGER NOT NULL DEFAULT 0;
        UPDATE messages SET saved_at = internaldate
    """)


def _v8_objectid_key(db: sqlite3.Connection) -> None:
    """Issue 17, OBJECTID (RFC 8474 7): the random secret MAILBOXID/EMAILID are keyed hashes
    under (`gateway/imapd/_objectid.py`), so they reveal no row counts."""
    db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('objectid_key', ?)",
               (os.urandom(OBJECTID_KEY_BYTES),))


def _v9_uidl_digests(db: sqlite3.Connection) -> None:
    """A POP3 message's content digest beside its UIDL (`gateway/sync_identity.py`): tells a
    new message under a reused UIDL (RFC 1939 7) from the stored one, and finds the stored
    message of a renamed UIDL. Rows from before this step have none (NULL): see there."""
    db.execute("ALTER TABLE uidls ADD COLUMN digest BLOB")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_initial, _v2_recent_and_pruning, _v3_subscriptions, _v4_sync_status, _v5_sort_fields,
    _v6_usage_counters, _v7_save_date, _v8_objectid_key, _v9_uidl_digests]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str) -> sqlite3.Connection:
    if path != ":memory:" and not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))   # mail: owner only (-wal/-shm follow)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal" and path != ":memory:":
        raise StoreError(f"cannot put {path} in WAL mode (got {mode})")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR...): a second ROLLBACK
        # would fail with "cannot rollback - no transaction is active" and hide the real cause.
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this file is missing; returns the schema version."""
    with transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            db.execute("INSERT INTO schema_version VALUES (0)")
    version = row[0] if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"store schema version {version} is newer than this program "
                         f"({SCHEMA_VERSION}); upgrade mailproxy")
    for step in range(version, SCHEMA_VERSION):
        with transaction(db):
            current = db.execute("SELECT version FROM schema_version").fetchone()[0]
            if current != step:   # another process migrated meanwhile
                continue
            MIGRATIONS[step](db)
            db.execute("UPDATE schema_version SET version = ?", (step + 1,))
    return SCHEMA_VERSION


def objectid_key(db: sqlite3.Connection) -> bytes:
    """The store's OBJECTID secret (schema step 8)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'objectid_key'").fetchone()
    if row is None:
        raise StoreError("store has no objectid_key: its schema was not migrated")
    return bytes(row[0])


def uidl_digest_key(db: sqlite3.Connection, ring: KeyRing | None) -> bytes:
    """The store's secret for POP3 content digests (`crypto.digest_secret`): made at the first
    open of a schema-9 store, and sealed again under the key ring's newest key at each open."""
    with transaction(db):
        row = db.execute("SELECT value FROM meta WHERE key = 'uidl_digest_key'").fetchone()
        secret = crypto.digest_secret(None if row is None else bytes(row[0]), ring)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('uidl_digest_key', ?)",
                   (crypto.seal_digest_secret(secret, ring),))
    return secret


def check_key(db: sqlite3.Connection, ring: KeyRing | None, path: str) -> None:
    """Refuse a store whose encryption state does not match the configuration."""
    with transaction(db):
        row = db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if ring is None:
            if row is not None:
                raise StoreKeyError(f"{path} is encrypted: configure gateway.key_file")
            return
        aad = b"store:key_check"
        if row is not None:
            crypto.unseal(row[0], aad, ring, "store key check")
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('key_check', ?)",
                   (crypto.seal(os.urandom(16), aad, ring),))


def collect_orphans(db: sqlite3.Connection) -> None:
    """Bodies of expunged messages wait for the sessions that still show them (`collect_bodies`);
    a process that stopped meanwhile leaves them behind: removed at the next start."""
    with transaction(db):
        db.execute("DELETE FROM bodies WHERE NOT EXISTS "
                   "(SELECT 1 FROM messages WHERE messages.body_id = bodies.id)")


def open_db(path: str, ring: KeyRing | None) -> sqlite3.Connection:
    try:
        db = connect(path)
    except OSError as exc:   # a missing or unwritable directory: one line, not a traceback
        raise StoreError(f"cannot create the store file: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store: {exc}") from None
    try:
        migrate(db)
        check_key(db, ring, path)
        collect_orphans(db)
    except sqlite3.Error as exc:   # read-only file or file system, disk full, not a database
        db.close()
        raise StoreError(f"cannot write the store: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db
