"""Copy an SQLite gateway store into PostgreSQL, exactly (`mailproxy gateway migrate`).

Theory of operation
-------------------
Rows are copied as they are, ids included: accounts, mailboxes (UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ), message rows (UIDs, flags, MODSEQs), the change log (so QRESYNC clients see
nothing new), the UIDL history (so the fetcher never brings back what was expunged) and the
sealed body, cache and credential records. Sealed records name their account and body id in
their associated data, and both ids are kept, so they are copied verbatim: no key is needed and
nothing is decrypted. The `meta` key check comes along, so the gateway opening the target with
the same `key_file` accepts it. The id sequences are set to SQLite's AUTOINCREMENT counters, so
no id is ever reused.

Resumable: the target records `migration_source` in `meta` before the first row. Each table is
copied in batches ordered by id, one transaction per batch, skipping rows already there
(`ON CONFLICT DO NOTHING`) and starting after the target's highest id, so a run killed at any
point is finished by running it again. Small mutable tables (accounts, mailboxes) and message
rows (flags change) are upserted on every run. Stop the gateway before migrating: a source that
changes during the copy is copied as of each batch.

A target that holds accounts and is not a migration of this same source is refused unless
`force` is given (its rows with the same ids would be overwritten).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

import psycopg

from ._accounts_sql import RECOUNT_USAGE
from ._pg_schema import CONNECT_TIMEOUT_S
from ._pg_schema import migrate as migrate_schema
from ._schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from .base import StoreError

__all__ = ["MigrationRefused", "TableCopy", "TABLES", "copy_sqlite_to_postgres"]

BATCH_ROWS = 500
MIGRATED_ORIGIN = "migrated"      # `changes.origin` of copied change-log rows


class MigrationRefused(StoreError):
    """The target is not empty (and not a migration of this source); nothing was written."""


@dataclass(frozen=True)
class TableCopy:
    name: str
    select: str          # SQLite: columns in target order, `WHERE <key> > ? ORDER BY <key>`
    insert: str          # PostgreSQL: INSERT ... (ON CONFLICT ...)
    key: str             # ordering columns, the first ones of `select` (batches, resume point)
    upsert: bool         # copied whole on every run (mutable rows)


def _insert(table: str, columns: str, conflict: str) -> str:
    marks = ", ".join(["%s"] * len(columns.split(",")))
    return f"INSERT INTO {table}({columns}) VALUES ({marks}) ON CONFLICT {conflict}"


_ACCOUNT_STATUS = "last_sync_at, last_error, last_error_at"
_ACCOUNT_COLS = f"id, upstream, username, last_uidvalidity, credentials, {_ACCOUNT_STATUS}"
_MAILBOX_COLS = ("id, account_id, name, special_use, uidvalidity, uidnext, highest_modseq, "
                 "recent_uid, changes_floor")
_MESSAGE_COLS = ("id, mailbox_id, uid, internaldate, tz_minutes, flags, modseq, body_id, pop3_uidl, "
                 "saved_at")

TABLES: list[TableCopy] = [
    TableCopy("accounts",
              'SELECT id, upstream, "user", last_uidvalidity, credentials, '
              f"{_ACCOUNT_STATUS} FROM accounts",
              _insert("accounts", _ACCOUNT_COLS,
                      "(id) DO UPDATE SET last_uidvalidity = excluded.last_uidvalidity, "
                      "credentials = excluded.credentials, "
                      "last_sync_at = excluded.last_sync_at, last_error = excluded.last_error, "
                      "last_error_at = excluded.last_error_at"), "id", True),
    TableCopy("mailboxes",
              f"SELECT {_MAILBOX_COLS} FROM mailboxes",
              _insert("mailboxes", _MAILBOX_COLS,
                      "(id) DO UPDATE SET name = excluded.name, uidnext = excluded.uidnext, "
                      "highest_modseq = excluded.highest_modseq, "
                      "recent_uid = excluded.recent_uid, "
                      "changes_floor = excluded.changes_floor"), "id", True),
    TableCopy("subscriptions", "SELECT account_id, name FROM subscriptions",
              _insert("subscriptions", "account_id, name", "(account_id, name) DO NOTHING"),
              "account_id, name", True),
    TableCopy("bodies", "SELECT id, account_id, size, data, cache, sort_fields FROM bodies",
              _insert("bodies", "id, account_id, size, data, cache, sort_fields",
                      "(id) DO UPDATE SET cache = excluded.cache, "
                      "sort_fields = excluded.sort_fields"), "id", False),
    TableCopy("messages", f"SELECT {_MESSAGE_COLS} FROM messages",
              _insert("messages", _MESSAGE_COLS,
                      "(id) DO UPDATE SET flags = excluded.flags, modseq = excluded.modseq"),
              "id", True),
    TableCopy("uidls",
              "SELECT account_id, uidl, fetched_at, deleted_upstream_at, digest FROM uidls",
              _insert("uidls", "account_id, uidl, fetched_at, deleted_upstream_at, digest",
                      "(account_id, uidl) DO UPDATE SET fetched_at = excluded.fetched_at, "
                      "deleted_upstream_at = excluded.deleted_upstream_at, "
                      "digest = excluded.digest"),
              "account_id, uidl", True),
    TableCopy("changes",
              "SELECT id, account_id, mailbox_id, modseq, kind, uid FROM changes",
              _insert("changes", "id, account_id, mailbox_id, modseq, kind, uid, origin",
                      "(id) DO NOTHING"), "id", False),
]
_SEQUENCES = ("accounts", "mailboxes", "bodies", "messages", "changes")

# progress(table, done, total)
Progress = Callable[[str, int, int], None]


def _value(c: psycopg.Connection[Any], sql: str) -> Any:
    """The single value a one-row query returns."""
    row = c.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _source(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise StoreError(f"{path}: no such SQLite store")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = db.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"{path}: not a gateway store ({exc})") from None
    if version is None or version[0] != SQLITE_SCHEMA_VERSION:
        db.close()
        raise StoreError(f"{path}: store schema version {version} is not the one this program "
                         f"migrates ({SQLITE_SCHEMA_VERSION}): open it once with this version of "
                         "mailproxy first")
    return db


def _claim_target(c: psycopg.Connection[Any], source_id: str, force: bool) -> None:
    """Record the migration in the target, after checking it may be written."""
    with c.transaction():
        row = c.execute("SELECT value FROM meta WHERE key = 'migration_source'").fetchone()
        ours = row is not None and bytes(row[0]) == source_id.encode()
        has_accounts = _value(c, "SELECT EXISTS (SELECT 1 FROM accounts)")
        if has_accounts and not ours:
            if not force:
                raise MigrationRefused("the target already holds gateway accounts: migrate into "
                                       "an empty database, or pass --force to empty it first")
            c.execute("TRUNCATE accounts, mailboxes, subscriptions, bodies, messages, uidls, "
                      "changes, meta, orphans")
        c.execute("INSERT INTO meta(key, value) VALUES ('migration_source', %s) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (source_id.encode(),))
        c.execute("DELETE FROM meta WHERE key = 'migration_done'")


def _copy_table(src: sqlite3.Connection, c: psycopg.Connection[Any], table: TableCopy,
                batch: int, progress: Progress | None) -> int:
    total: int = src.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
    keys = [k.strip() for k in table.key.split(",")]
    after: tuple[Any, ...] = (0,) if len(keys) == 1 else (0, "")
    if not table.upsert:     # append-only rows: resume after the highest id already copied
        after = (_value(c, f"SELECT coalesce(max(id), 0) FROM {table.name}"),)
    done = src.execute(f"SELECT count(*) FROM {table.name} WHERE ({table.key}) <= "
                       f"({', '.join('?' * len(keys))})", after).fetchone()[0]
    if progress:
        progress(table.name, done, total)
    marks = ", ".join("?" * len(keys))
    while True:
        rows = src.execute(f"{table.select} WHERE ({table.key}) > ({marks}) "
                           f"ORDER BY {table.key} LIMIT ?", (*after, batch)).fetchall()
        if not rows:
            return total
        with c.transaction():
            if table.name == "changes":
                values = [(*row, MIGRATED_ORIGIN) for row in rows]
            else:
                values = rows
            c.cursor().executemany(table.insert, values)
        after = tuple(rows[-1][:len(keys)])
        done += len(rows)
        if progress:
            progress(table.name, done, total)


def _finish(src: sqlite3.Connection, c: psycopg.Connection[Any]) -> None:
    counters = dict(src.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    with c.transaction():
        for table in _SEQUENCES:
            top = _value(c, f"SELECT coalesce(max(id), 0) FROM {table}")
            value = max(top, counters.get(table, 0))
            if value:
                c.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, value))
        for key, value in src.execute("SELECT key, value FROM meta"):
            c.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) "
                      "DO UPDATE SET value = excluded.value", (key, value))
        c.execute("INSERT INTO orphans(body_id, xid) SELECT b.id, 0 FROM bodies b "   # swept
                  "WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = b.id) "
                  "ON CONFLICT (body_id) DO NOTHING")
        c.execute(RECOUNT_USAGE)   # exact whatever the target held before (`force`)
        c.execute("INSERT INTO meta(key, value) VALUES ('migration_done', 'yes') "
                  "ON CONFLICT (key) DO NOTHING")


def copy_sqlite_to_postgres(path: str, url: str, *, password: str | None = None,
                            force: bool = False, batch: int = BATCH_ROWS,
                            progress: Progress | None = None) -> dict[str, int]:
    """Copy (or finish copying) the store at `path` into `url`; returns rows per table.
    Blocking: run it in a thread from async code."""
    src = _source(path)
    # autocommit: each `c.transaction()` block is then its own transaction (without it, the
    # first bare statement opens one that turns every later block into a savepoint, and a
    # killed run kept nothing)
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True,
                              "application_name": "mailproxy-migrate"}
    if password is not None:
        kwargs["password"] = password
    try:
        with psycopg.connect(url, **kwargs) as c:
            migrate_schema(c)
            source_id = f"sqlite:{os.path.realpath(path)}"
            _claim_target(c, source_id, force)
            counts = {t.name: _copy_table(src, c, t, batch, progress) for t in TABLES}
            _finish(src, c)
            return counts
    finally:
        src.close()
