"""The embedded Store: one SQLite file in WAL mode.

Theory of operation: one `sqlite3` connection, used only from worker threads and one call at a time
(`trio.to_thread.run_sync` behind a `CapacityLimiter(1)`), so SQLite never blocks the trio loop and
never sees two statements at once. Every write runs in `BEGIN IMMEDIATE ... COMMIT` (the write lock
is taken up front, so two processes sharing the file queue on `busy_timeout` instead of failing on
a lock upgrade). `ingest_many` commits a whole batch in one transaction.

Durability: `journal_mode=WAL` + `synchronous=NORMAL`. A commit is in the -wal file (the OS page
cache) when COMMIT returns, so a killed process (SIGKILL, OOM) loses nothing committed; only a power
loss or kernel crash can lose the last commits, and never corrupts the file. The fetcher calls
`flush()` (fsync of the WAL) before it sends any DELE upstream, so a message is on disk before the
only other copy goes away.

Schema changes are migrations: `_MIGRATIONS[i]` brings the schema from version i to i+1, each in
its own transaction, recorded in `schema_version`. Never edit a released migration; append one.

Bodies and cache blobs are sealed by `crypto.seal` (zlib, then AES-GCM when a key ring is given)
with associated data "acct:{account}:body:{body_id}" / "acct:{account}:cache:{body_id}". Body ids
come from AUTOINCREMENT and are never reused, so the associated data of a record never changes.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import trio

from . import crypto
from .base import (
    DEFAULT_MAILBOXES, HIERARCHY_DELIMITER, INBOX, Account, Change, ChangeKind, FlagMode,
    FlagUpdate, IngestItem, Mailbox, MailboxExists, MailboxNotFound, MessageMeta, StoreError,
    StoreFlagsResult, normalize_flags,
)
from .crypto import KeyRing, StoreKeyError

BUSY_TIMEOUT_MS = 30_000
_CHUNK = 500   # host parameters per IN (...) list, well under SQLite's limit


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


_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1_initial]
SCHEMA_VERSION = len(_MIGRATIONS)


def _connect(path: str) -> sqlite3.Connection:
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
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this file is missing; returns the schema version."""
    with _transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            db.execute("INSERT INTO schema_version VALUES (0)")
    version = row[0] if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"store schema version {version} is newer than this program "
                         f"({SCHEMA_VERSION}); upgrade mailproxy")
    for step in range(version, SCHEMA_VERSION):
        with _transaction(db):
            current = db.execute("SELECT version FROM schema_version").fetchone()[0]
            if current != step:   # another process migrated meanwhile
                continue
            _MIGRATIONS[step](db)
            db.execute("UPDATE schema_version SET version = ?", (step + 1,))
    return SCHEMA_VERSION


def _canon(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1); every other name is kept as given."""
    return INBOX if name.upper() == INBOX else name


def _flags_text(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


def _flags_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _to_date(epoch: int, tz_minutes: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone(dt.timedelta(minutes=tz_minutes)))


def _from_date(value: dt.datetime | None) -> tuple[int, int]:
    if value is None:
        value = dt.datetime.now(dt.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    offset = value.utcoffset() or dt.timedelta(0)
    return int(value.timestamp()), int(offset.total_seconds() // 60)


_MESSAGE_COLUMNS = "id, mailbox_id, uid, internaldate, tz_minutes, flags, modseq, body_id, pop3_uidl"


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


class SqliteStore:
    """See the module docstring. Create with `await open_sqlite(path, key_ring)`."""

    def __init__(self, db: sqlite3.Connection, path: str, ring: KeyRing | None):
        self._db = db
        self.path = path
        self._ring = ring
        self._limiter = trio.CapacityLimiter(1)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._db is None:
            raise StoreError("store is closed")
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    # ---- helpers run in the worker thread -------------------------------------------------------

    def _mailbox_row(self, mailbox_id: int) -> tuple:
        row = self._db.execute("SELECT id, account_id, uidnext, highest_modseq FROM mailboxes "
                               "WHERE id = ?", (mailbox_id,)).fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return row

    def _mailbox_id(self, account_id: int, name: str) -> int:
        row = self._db.execute("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                               (account_id, _canon(name))).fetchone()
        if row is None:
            raise MailboxNotFound(f"mailbox {name!r} does not exist")
        return row[0]

    def _next_uidvalidity(self, account_id: int) -> int:
        last = self._db.execute("SELECT last_uidvalidity FROM accounts WHERE id = ?",
                                (account_id,)).fetchone()[0]
        value = max(int(time.time()), last + 1)
        self._db.execute("UPDATE accounts SET last_uidvalidity = ? WHERE id = ?", (value, account_id))
        return value

    def _new_mailbox(self, account_id: int, name: str, special_use: str | None) -> int:
        uidvalidity = self._next_uidvalidity(account_id)
        return self._db.execute(
            "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity) VALUES (?, ?, ?, ?)",
            (account_id, name, special_use, uidvalidity)).lastrowid

    def _bump(self, mailbox_id: int) -> int:
        return self._db.execute("UPDATE mailboxes SET highest_modseq = highest_modseq + 1 "
                                "WHERE id = ? RETURNING highest_modseq", (mailbox_id,)).fetchone()[0]

    def _log(self, account_id: int, mailbox_id: int, modseq: int, kind: ChangeKind,
             uids: Sequence[int]) -> None:
        self._db.executemany(
            "INSERT INTO changes(account_id, mailbox_id, modseq, kind, uid) VALUES (?, ?, ?, ?, ?)",
            [(account_id, mailbox_id, modseq, kind.value, uid) for uid in uids])

    def _take_uids(self, mailbox_id: int, count: int) -> int:
        """Reserve `count` UIDs; returns the first."""
        return self._db.execute("UPDATE mailboxes SET uidnext = uidnext + ? WHERE id = ? "
                                "RETURNING uidnext", (count, mailbox_id)).fetchone()[0] - count

    def _next_body_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'bodies'").fetchone()
        return (row[0] if row else 0) + 1

    def _insert_body(self, body_id: int, account_id: int, body: bytes, cache: bytes | None) -> None:
        data = crypto.seal(body, f"acct:{account_id}:body:{body_id}".encode(), self._ring)
        sealed_cache = None if cache is None else crypto.seal(
            cache, f"acct:{account_id}:cache:{body_id}".encode(), self._ring)
        self._db.execute("INSERT INTO bodies(id, account_id, size, data, cache) VALUES (?, ?, ?, ?, ?)",
                         (body_id, account_id, len(body), data, sealed_cache))

    def _rows(self, mailbox_id: int, uids: Sequence[int]) -> list[tuple]:
        rows: list[tuple] = []
        for chunk in _chunks(sorted(set(uids))):
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid IN ({marks})",
                (mailbox_id, *chunk)).fetchall()
        rows.sort(key=lambda row: row[2])
        return rows

    def _delete_messages(self, mailbox_id: int, rows: list[tuple]) -> None:
        self._db.executemany("DELETE FROM messages WHERE id = ?", [(row[0],) for row in rows])
        self._collect_bodies({row[7] for row in rows})

    def _collect_bodies(self, body_ids: set[int]) -> None:
        self._db.executemany(
            "DELETE FROM bodies WHERE id = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages WHERE body_id = ?)", [(b, b) for b in body_ids])

    def _copy_rows(self, rows: list[tuple], dst_mailbox_id: int) -> list[tuple[int, int]]:
        _, dst_account, _, _ = self._mailbox_row(dst_mailbox_id)
        first = self._take_uids(dst_mailbox_id, len(rows))
        modseq = self._bump(dst_mailbox_id)
        pairs = [(row[2], first + i) for i, row in enumerate(rows)]
        self._db.executemany(
            "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, body_id, "
            "pop3_uidl) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(dst_mailbox_id, new, row[3], row[4], row[5], modseq, row[7], row[8])
             for row, (_, new) in zip(rows, pairs)])
        self._log(dst_account, dst_mailbox_id, modseq, ChangeKind.APPEND, [new for _, new in pairs])
        return pairs

    def _expunge_rows(self, mailbox_id: int, account_id: int, rows: list[tuple]) -> None:
        if rows:
            modseq = self._bump(mailbox_id)
            self._delete_messages(mailbox_id, rows)
            self._log(account_id, mailbox_id, modseq, ChangeKind.EXPUNGE, [row[2] for row in rows])

    def _same_account(self, src: int, dst: int) -> int:
        src_account = self._mailbox_row(src)[1]
        if self._mailbox_row(dst)[1] != src_account:
            raise StoreError("cannot copy between accounts")
        return src_account

    # ---- accounts and credentials ----------------------------------------------------------------

    def _ensure_account(self, upstream: str, user: str) -> Account:
        with _transaction(self._db):
            cur = self._db.execute("INSERT OR IGNORE INTO accounts(upstream, user) VALUES (?, ?)",
                                   (upstream, user))
            account_id = self._db.execute("SELECT id FROM accounts WHERE upstream = ? AND user = ?",
                                          (upstream, user)).fetchone()[0]
            if cur.rowcount:
                for name, special_use in DEFAULT_MAILBOXES.items():
                    self._new_mailbox(account_id, name, special_use)
        return Account(account_id, upstream, user)

    async def ensure_account(self, upstream: str, user: str) -> Account:
        """The account for (upstream, user), created with the default mailboxes on first use."""
        return await self._run(self._ensure_account, upstream, user)

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
        with _transaction(self._db):
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

    # ---- mailboxes ------------------------------------------------------------------------------

    _MAILBOX_SELECT = (
        "SELECT mb.id, mb.account_id, mb.name, mb.special_use, mb.uidvalidity, mb.uidnext, "
        "mb.highest_modseq, mb.subscribed, (SELECT count(*) FROM messages m WHERE m.mailbox_id = mb.id) "
        "FROM mailboxes mb ")

    def _list_mailboxes(self, account_id: int, name: str | None = None) -> list[Mailbox]:
        where, args = "WHERE mb.account_id = ?", [account_id]
        if name is not None:
            where, args = where + " AND mb.name = ?", args + [_canon(name)]
        rows = self._db.execute(self._MAILBOX_SELECT + where + " ORDER BY mb.name", args).fetchall()
        return [Mailbox(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8]) for r in rows]

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return await self._run(self._list_mailboxes, account_id)

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        found = await self._run(self._list_mailboxes, account_id, name)
        return found[0] if found else None

    def _create_mailbox(self, account_id: int, name: str, special_use: str | None) -> Mailbox:
        name = _canon(name)
        with _transaction(self._db):
            if self._db.execute("SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?",
                                (account_id, name)).fetchone():
                raise MailboxExists(f"mailbox {name!r} already exists")
            self._new_mailbox(account_id, name, special_use)
        return self._list_mailboxes(account_id, name)[0]

    async def create_mailbox(self, account_id: int, name: str,
                             special_use: str | None = None) -> Mailbox:
        return await self._run(self._create_mailbox, account_id, name, special_use)

    def _delete_mailbox(self, account_id: int, name: str) -> None:
        if _canon(name) == INBOX:
            raise StoreError("INBOX cannot be deleted")
        with _transaction(self._db):
            mailbox_id = self._mailbox_id(account_id, name)
            bodies = {r[0] for r in self._db.execute(
                "SELECT DISTINCT body_id FROM messages WHERE mailbox_id = ?", (mailbox_id,))}
            self._db.execute("DELETE FROM messages WHERE mailbox_id = ?", (mailbox_id,))
            self._db.execute("DELETE FROM changes WHERE mailbox_id = ?", (mailbox_id,))
            self._db.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
            self._collect_bodies(bodies)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        """Delete a mailbox and its messages (not its inferiors). INBOX cannot be deleted."""
        await self._run(self._delete_mailbox, account_id, name)

    def _rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        old, new = _canon(old), _canon(new)
        if new == INBOX:
            raise MailboxExists("INBOX already exists")
        if new.startswith(old + HIERARCHY_DELIMITER):
            raise StoreError(f"cannot rename {old!r} to its own inferior {new!r}")
        with _transaction(self._db):
            mailbox_id = self._mailbox_id(account_id, old)
            if self._db.execute("SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?",
                                (account_id, new)).fetchone():
                raise MailboxExists(f"mailbox {new!r} already exists")
            if old == INBOX:
                self._rename_inbox(account_id, mailbox_id, new)
                return
            prefix = old + HIERARCHY_DELIMITER
            inferiors = self._db.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ?",
                (account_id, len(prefix), prefix)).fetchall()
            self._db.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (new, mailbox_id))
            self._db.executemany("UPDATE mailboxes SET name = ? WHERE id = ?",
                                 [(new + HIERARCHY_DELIMITER + name[len(prefix):], mid)
                                  for mid, name in inferiors])

    def _rename_inbox(self, account_id: int, inbox_id: int, new: str) -> None:
        """RFC 3501 6.3.5: move INBOX's messages to a new mailbox; INBOX stays, empty."""
        target = self._new_mailbox(account_id, new, None)
        rows = self._db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? "
                                "ORDER BY uid", (inbox_id,)).fetchall()
        if rows:
            self._copy_rows(rows, target)
            modseq = self._bump(inbox_id)
            self._db.execute("DELETE FROM messages WHERE mailbox_id = ?", (inbox_id,))
            self._log(account_id, inbox_id, modseq, ChangeKind.EXPUNGE, [row[2] for row in rows])

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Rename a mailbox and its inferiors; renaming INBOX moves its messages (RFC 3501 6.3.5)."""
        await self._run(self._rename_mailbox, account_id, old, new)

    def _set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        with _transaction(self._db):
            mailbox_id = self._mailbox_id(account_id, name)
            self._db.execute("UPDATE mailboxes SET subscribed = ? WHERE id = ?",
                             (int(subscribed), mailbox_id))

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        await self._run(self._set_subscribed, account_id, name, subscribed)

    async def uidvalidity(self, mailbox_id: int) -> int:
        return await self._run(lambda: self._db.execute(
            "SELECT uidvalidity FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()[0])

    async def highest_modseq(self, mailbox_id: int) -> int:
        return (await self._run(self._mailbox_row, mailbox_id))[3]

    # ---- messages -------------------------------------------------------------------------------

    def _append(self, mailbox_id: int, body: bytes, flags: Sequence[str],
                internaldate: dt.datetime | None, cache: bytes | None) -> int:
        epoch, tz = _from_date(internaldate)
        with _transaction(self._db):
            _, account_id, _, _ = self._mailbox_row(mailbox_id)
            body_id = self._next_body_id()
            self._insert_body(body_id, account_id, body, cache)
            uid = self._take_uids(mailbox_id, 1)
            modseq = self._bump(mailbox_id)
            self._db.execute(
                "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                "body_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, epoch, tz, _flags_text(normalize_flags(flags)), modseq, body_id))
            self._log(account_id, mailbox_id, modseq, ChangeKind.APPEND, [uid])
        return uid

    async def append(self, mailbox_id: int, body: bytes, flags: Sequence[str] = (),
                     internaldate: dt.datetime | None = None, cache: bytes | None = None) -> int:
        """Add a message (IMAP APPEND); returns its UID."""
        return await self._run(self._append, mailbox_id, body, flags, internaldate, cache)

    def _messages(self, mailbox_id: int) -> list[MessageMeta]:
        rows = self._db.execute(
            "SELECT m.id, m.mailbox_id, m.uid, m.internaldate, m.tz_minutes, m.flags, m.modseq, "
            "m.body_id, m.pop3_uidl, b.size FROM messages m JOIN bodies b ON b.id = m.body_id "
            "WHERE m.mailbox_id = ? ORDER BY m.uid", (mailbox_id,)).fetchall()
        out = []
        for row in rows:
            mid, mailbox, uid, epoch, tz, flags, modseq, body_id, uidl, size = row
            out.append(MessageMeta(mid, mailbox, uid, _to_date(epoch, tz), size, _flags_set(flags),
                                   modseq, body_id, uidl))
        return out

    async def messages(self, mailbox_id: int) -> list[MessageMeta]:
        """Every message of the mailbox, ordered by UID (message sequence numbers are indexes + 1)."""
        return await self._run(self._messages, mailbox_id)

    def _blob(self, message: MessageMeta, column: str) -> bytes | None:
        row = self._db.execute(f"SELECT account_id, {column} FROM bodies WHERE id = ?",
                               (message.body_id,)).fetchone()
        if row is None:
            raise StoreError(f"message {message.uid} no longer exists")
        account_id, record = row
        if record is None:
            return None
        kind = "body" if column == "data" else "cache"
        return crypto.unseal(record, f"acct:{account_id}:{kind}:{message.body_id}".encode(),
                             self._ring, f"message {message.uid}")

    async def body(self, message: MessageMeta) -> bytes:
        """The raw RFC 822 bytes, exactly as received."""
        return await self._run(self._blob, message, "data")

    async def cache(self, message: MessageMeta) -> bytes | None:
        return await self._run(self._blob, message, "cache")

    def _set_cache(self, message: MessageMeta, cache: bytes) -> None:
        with _transaction(self._db):
            row = self._db.execute("SELECT account_id FROM bodies WHERE id = ?",
                                   (message.body_id,)).fetchone()
            if row is None:
                raise StoreError(f"message {message.uid} no longer exists")
            sealed = crypto.seal(cache, f"acct:{row[0]}:cache:{message.body_id}".encode(), self._ring)
            self._db.execute("UPDATE bodies SET cache = ? WHERE id = ?", (sealed, message.body_id))

    async def set_cache(self, message: MessageMeta, cache: bytes) -> None:
        """Replace the opaque cache blob (shared by copies). Not a message change: no MODSEQ."""
        await self._run(self._set_cache, message, cache)

    def _store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                     mode: FlagMode, unchanged_since: int | None) -> StoreFlagsResult:
        wanted = normalize_flags(flags)
        with _transaction(self._db):
            _, account_id, _, _ = self._mailbox_row(mailbox_id)
            updated, modified, to_write = [], [], []
            for row in self._rows(mailbox_id, uids):
                mid, uid, old, modseq = row[0], row[2], _flags_set(row[5]), row[6]
                if unchanged_since is not None and modseq > unchanged_since:
                    modified.append(uid)
                    continue
                new = (old | wanted if mode is FlagMode.ADD else
                       old - wanted if mode is FlagMode.REMOVE else wanted)
                updated.append(FlagUpdate(uid, new, modseq, new != old))
                if new != old:
                    to_write.append((mid, len(updated) - 1))
            if to_write:
                modseq = self._bump(mailbox_id)
                for mid, index in to_write:
                    updated[index] = updated[index]._replace(modseq=modseq)
                self._db.executemany("UPDATE messages SET flags = ?, modseq = ? WHERE id = ?",
                                     [(_flags_text(updated[i].flags), modseq, mid)
                                      for mid, i in to_write])
                self._log(account_id, mailbox_id, modseq, ChangeKind.FLAGS,
                          [updated[i].uid for _, i in to_write])
        return StoreFlagsResult(updated, modified)

    async def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                          mode: FlagMode, unchanged_since: int | None = None) -> StoreFlagsResult:
        """IMAP STORE: change flags of the listed UIDs (missing UIDs are ignored).

        With `unchanged_since` (RFC 7162 CONDSTORE) a message whose MODSEQ is greater is left alone
        and listed in `modified`. Messages whose flags really change share one new MODSEQ.
        """
        return await self._run(self._store_flags, mailbox_id, list(uids), flags, mode,
                               unchanged_since)

    def _copy(self, src: int, uids: Sequence[int], dst: int, move: bool) -> list[tuple[int, int]]:
        with _transaction(self._db):
            account_id = self._same_account(src, dst)
            rows = self._rows(src, uids)
            if not rows:
                return []
            pairs = self._copy_rows(rows, dst)
            if move:
                self._expunge_rows(src, account_id, rows)
        return pairs

    async def copy(self, src_mailbox_id: int, uids: Sequence[int],
                   dst_mailbox_id: int) -> list[tuple[int, int]]:
        """IMAP COPY: returns (source UID, new UID) pairs in UID order, for COPYUID (RFC 4315)."""
        return await self._run(self._copy, src_mailbox_id, list(uids), dst_mailbox_id, False)

    async def move(self, src_mailbox_id: int, uids: Sequence[int],
                   dst_mailbox_id: int) -> list[tuple[int, int]]:
        """IMAP MOVE (RFC 6851): copy and expunge in one transaction."""
        return await self._run(self._copy, src_mailbox_id, list(uids), dst_mailbox_id, True)

    def _expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        with _transaction(self._db):
            _, account_id, _, _ = self._mailbox_row(mailbox_id)
            rows = self._rows(mailbox_id, uids)
            self._expunge_rows(mailbox_id, account_id, rows)
        return [row[2] for row in rows]

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove the listed messages (the IMAP layer picks those with \\Deleted); returns the UIDs
        removed. The UIDL stays known, so ingest never brings an expunged message back."""
        return await self._run(self._expunge, mailbox_id, list(uids))

    def _changes_since(self, mailbox_id: int, modseq: int) -> list[Change]:
        rows = self._db.execute("SELECT modseq, kind, uid FROM changes WHERE mailbox_id = ? "
                                "AND modseq > ? ORDER BY id", (mailbox_id, modseq)).fetchall()
        return [Change(m, ChangeKind(kind), uid) for m, kind, uid in rows]

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[Change]:
        """Changes with MODSEQ greater than `modseq`, oldest first."""
        return await self._run(self._changes_since, mailbox_id, modseq)

    # ---- ingest and retention -------------------------------------------------------------------

    def _ingest_many(self, account_id: int, items: Sequence[IngestItem]) -> list[int | None]:
        now = time.time()
        results: list[int | None] = []
        with _transaction(self._db):
            inbox = self._mailbox_id(account_id, INBOX)
            body_id = self._next_body_id()
            fresh: list[tuple[IngestItem, int]] = []
            for item in items:
                cur = self._db.execute("INSERT OR IGNORE INTO uidls(account_id, uidl, fetched_at) "
                                       "VALUES (?, ?, ?)", (account_id, item.uidl, now))
                if not cur.rowcount:
                    results.append(None)
                    continue
                self._insert_body(body_id, account_id, item.body, item.cache)
                fresh.append((item, body_id))
                body_id += 1
                results.append(-1)
            if not fresh:
                return results
            first = self._take_uids(inbox, len(fresh))
            modseq = self._bump(inbox)
            rows = []
            for offset, (item, bid) in enumerate(fresh):
                epoch, tz = _from_date(item.internaldate)
                rows.append((inbox, first + offset, epoch, tz, "", modseq, bid, item.uidl))
            self._db.executemany(
                "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                "body_id, pop3_uidl) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
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

    async def known_uidls(self, account_id: int) -> set[str]:
        """Every UIDL ever ingested for the account."""
        return await self._run(lambda: {r[0] for r in self._db.execute(
            "SELECT uidl FROM uidls WHERE account_id = ?", (account_id,))})

    async def fetched_at(self, account_id: int) -> dict[str, float]:
        """UIDL -> epoch seconds of ingest, for the UIDLs not yet deleted upstream."""
        return await self._run(lambda: dict(self._db.execute(
            "SELECT uidl, fetched_at FROM uidls WHERE account_id = ? AND deleted_upstream_at IS NULL",
            (account_id,)).fetchall()))

    def _mark_deleted_upstream(self, account_id: int, uidls: Sequence[str]) -> None:
        now = time.time()
        with _transaction(self._db):
            self._db.executemany("UPDATE uidls SET deleted_upstream_at = ? WHERE account_id = ? "
                                 "AND uidl = ?", [(now, account_id, u) for u in uidls])

    async def mark_deleted_upstream(self, account_id: int, uidls: Sequence[str]) -> None:
        """Record that a DELE of these UIDLs took effect (after a successful QUIT)."""
        await self._run(self._mark_deleted_upstream, account_id, list(uidls))

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
        return await self._run(self._size_bytes)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await trio.to_thread.run_sync(db.close, limiter=self._limiter)

    # ---- batched reads and cache writes (gateway fast paths; appended) ------------------------

    def _blobs(self, messages: Sequence[MessageMeta], column: str) -> list[bytes | None]:
        kind = "body" if column == "data" else "cache"
        found: dict[int, bytes | None] = {}
        ids = sorted({m.body_id for m in messages})
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for body_id, account_id, record in self._db.execute(
                    f"SELECT id, account_id, {column} FROM bodies WHERE id IN ({marks})", chunk):
                found[body_id] = None if record is None else crypto.unseal(
                    record, f"acct:{account_id}:{kind}:{body_id}".encode(), self._ring,
                    f"{kind} {body_id}")
        return [found.get(m.body_id) for m in messages]

    async def bodies(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Raw bodies of many messages in one call, in order; None where the body is gone."""
        return await self._run(self._blobs, list(messages), "data")

    async def caches(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Cache blobs of many messages in one call, in order; None when absent (or gone)."""
        return await self._run(self._blobs, list(messages), "cache")

    def _set_caches(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None:
        with _transaction(self._db):
            for message, cache in items:
                row = self._db.execute("SELECT account_id FROM bodies WHERE id = ?",
                                       (message.body_id,)).fetchone()
                if row is not None:
                    sealed = crypto.seal(cache, f"acct:{row[0]}:cache:{message.body_id}".encode(),
                                         self._ring)
                    self._db.execute("UPDATE bodies SET cache = ? WHERE id = ?",
                                     (sealed, message.body_id))

    async def set_caches(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None:
        """`set_cache` for many messages in one transaction; bodies that are gone are skipped."""
        await self._run(self._set_caches, list(items))

    def _messages_by_uid(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        out = []
        for chunk in _chunks(sorted(set(uids))):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT m.id, m.mailbox_id, m.uid, m.internaldate, m.tz_minutes, m.flags, m.modseq, "
                "m.body_id, m.pop3_uidl, b.size FROM messages m JOIN bodies b ON b.id = m.body_id "
                f"WHERE m.mailbox_id = ? AND m.uid IN ({marks}) ORDER BY m.uid",
                (mailbox_id, *chunk)).fetchall()
            for mid, mailbox, uid, epoch, tz, flags, modseq, body_id, uidl, size in rows:
                out.append(MessageMeta(mid, mailbox, uid, _to_date(epoch, tz), size,
                                       _flags_set(flags), modseq, body_id, uidl))
        return out

    async def messages_by_uid(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        """The listed messages that exist, ordered by UID (an index refresh after changes)."""
        return await self._run(self._messages_by_uid, mailbox_id, list(uids))


def _check_key(db: sqlite3.Connection, ring: KeyRing | None, path: str) -> None:
    """Refuse a store whose encryption state does not match the configuration."""
    with _transaction(db):
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


def _open(path: str, ring: KeyRing | None) -> sqlite3.Connection:
    db = _connect(path)
    try:
        migrate(db)
        _check_key(db, ring, path)
    except BaseException:
        db.close()
        raise
    return db


async def open_sqlite(path: str, key_ring: KeyRing | None = None) -> SqliteStore:
    """Open (creating and migrating as needed) the SQLite store at `path`."""
    db = await trio.to_thread.run_sync(_open, path, key_ring)
    return SqliteStore(db, path, key_ring)
