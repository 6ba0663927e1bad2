"""The message half of `SqliteStore`: rows, flags, copies, expunges and changes (the bodies and
their sealed records are `BodyOps`, `_sqlite_bodies.py`).

Theory of operation: `MessageOps` is a mixin of `SqliteStore` (`sqlite.py`). Its methods come in
pairs, as in the rest of the store: `_name(...)` runs in the store's worker thread against
`self._db` (inside `transaction()` when it writes), `name(...)` is the async API that hands it to
`self._run`, or to `self._quick` when its work is small (at most `INLINE_ROWS` messages and
`INLINE_BYTES` of bodies: then it may run in the trio thread, see `sqlite.py`). The host provides
`_db`, `_ring`, `_run` and `_quick`.

Every change to a mailbox takes a new MODSEQ (`_bump`: `highest_modseq + 1`, shared by all
messages changed together) and is logged in `changes` (`_log`, one row per UID), which is what
`changes_since()` answers CONDSTORE/QRESYNC and IDLE from. UIDs are reserved in blocks
(`_take_uids`), so they only grow.

Bodies are shared: COPY/MOVE copy the message row, not the body (`_sqlite_bodies.py`). Lists
of UIDs are queried a slice at a time (`chunks`: SQLite's host-parameter limit).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar, TypeVarTuple

from ._rows import (
    MESSAGE_COLUMNS,
    META_SELECT,
    flags_set,
    flags_text,
    from_date,
    merge_flags,
    meta,
    save_time,
)
from ._schema import transaction
from ._sqlite_bodies import INLINE_BYTES, INLINE_ROWS, BodyOps, chunks
from .base import (
    AppendItem,
    Change,
    ChangeKind,
    ChangesPruned,
    FlagMode,
    MailboxNotFound,
    MessageMeta,
    StoreError,
    StoreFlagsResult,
    normalize_flags,
)
from .crypto import KeyRing

__all__ = ["MessageOps"]

Row = tuple[Any, ...]   # one sqlite3 result row
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

class MessageOps(BodyOps):
    """Message operations of `SqliteStore` (see the module docstring)."""

    _db: sqlite3.Connection
    _ring: KeyRing | None

    if TYPE_CHECKING:
        async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T: ...
        async def _quick(self, fn: Callable[[*Ts], T], *args: *Ts) -> T: ...

    # ---- helpers run in the worker thread -------------------------------------------------------

    def _mailbox_row(self, mailbox_id: int) -> Row:
        row: Row | None = self._db.execute("SELECT id, account_id, uidnext, highest_modseq, recent_uid, "
                               "changes_floor FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return row

    def _bump(self, mailbox_id: int) -> int:
        return int(self._db.execute("UPDATE mailboxes SET highest_modseq = highest_modseq + 1 "
                                    "WHERE id = ? RETURNING highest_modseq", (mailbox_id,)).fetchone()[0])

    def _log(self, account_id: int, mailbox_id: int, modseq: int, kind: ChangeKind,
             uids: Sequence[int]) -> None:
        self._db.executemany(
            "INSERT INTO changes(account_id, mailbox_id, modseq, kind, uid) VALUES (?, ?, ?, ?, ?)",
            [(account_id, mailbox_id, modseq, kind.value, uid) for uid in uids])

    def _take_uids(self, mailbox_id: int, count: int) -> int:
        """Reserve `count` UIDs; returns the first."""
        uidnext: int = self._db.execute("UPDATE mailboxes SET uidnext = uidnext + ? WHERE id = ? "
                                        "RETURNING uidnext", (count, mailbox_id)).fetchone()[0]
        return uidnext - count

    def _next_body_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'bodies'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def _rows(self, mailbox_id: int, uids: Sequence[int]) -> list[Row]:
        rows: list[Row] = []
        for chunk in chunks(sorted(set(uids))):
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid IN ({marks})",
                (mailbox_id, *chunk)).fetchall()
        rows.sort(key=lambda row: row[2])
        return rows

    def _delete_messages(self, mailbox_id: int, rows: list[Row]) -> None:
        """Remove message rows; their bodies stay until `collect_bodies` (see `expunge`)."""
        self._db.executemany("DELETE FROM messages WHERE id = ?", [(row[0],) for row in rows])

    def _copy_rows(self, rows: list[Row], dst_mailbox_id: int) -> list[tuple[int, int]]:
        dst_account = self._mailbox_row(dst_mailbox_id)[1]
        first = self._take_uids(dst_mailbox_id, len(rows))
        modseq = self._bump(dst_mailbox_id)
        pairs = [(row[2], first + i) for i, row in enumerate(rows)]
        self._db.executemany(
            "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, body_id, "
            "pop3_uidl, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(dst_mailbox_id, new, row[3], row[4], row[5], modseq, row[7], row[8], save_time())
             for row, (_, new) in zip(rows, pairs, strict=True)])
        self._log(dst_account, dst_mailbox_id, modseq, ChangeKind.APPEND, [new for _, new in pairs])
        return pairs

    def _expunge_rows(self, mailbox_id: int, account_id: int, rows: list[Row]) -> None:
        if rows:
            modseq = self._bump(mailbox_id)
            self._delete_messages(mailbox_id, rows)
            self._log(account_id, mailbox_id, modseq, ChangeKind.EXPUNGE, [row[2] for row in rows])

    def _same_account(self, src: int, dst: int) -> int:
        src_account: int = self._mailbox_row(src)[1]
        if self._mailbox_row(dst)[1] != src_account:
            raise StoreError("cannot copy between accounts")
        return src_account

    # ---- messages -------------------------------------------------------------------------------

    def _append(self, mailbox_id: int, body: bytes, flags: Sequence[str],
                internaldate: dt.datetime | None, cache: bytes | None,
                sort_fields: bytes | None) -> int:
        epoch, tz = from_date(internaldate)
        with transaction(self._db):
            account_id = self._mailbox_row(mailbox_id)[1]
            body_id = self._next_body_id()
            self._insert_body(body_id, account_id, body, cache, sort_fields)
            uid = self._take_uids(mailbox_id, 1)
            modseq = self._bump(mailbox_id)
            self._db.execute(
                "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                "body_id, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, epoch, tz, flags_text(normalize_flags(flags)), modseq, body_id,
                 save_time()))
            self._log(account_id, mailbox_id, modseq, ChangeKind.APPEND, [uid])
        return uid

    async def append(self, mailbox_id: int, body: bytes, flags: Sequence[str] = (),
                     internaldate: dt.datetime | None = None, cache: bytes | None = None,
                     sort_fields: bytes | None = None) -> int:
        """Add a message (IMAP APPEND); returns its UID."""
        run = self._quick if len(body) + len(cache or b"") <= INLINE_BYTES else self._run
        return await run(self._append, mailbox_id, body, flags, internaldate, cache, sort_fields)

    def _append_many(self, mailbox_id: int, items: Sequence[AppendItem]) -> list[int]:
        with transaction(self._db):
            account_id = self._mailbox_row(mailbox_id)[1]
            first = self._take_uids(mailbox_id, len(items))
            modseq = self._bump(mailbox_id)
            for n, item in enumerate(items):
                epoch, tz = from_date(item.internaldate)
                body_id = self._next_body_id()
                self._insert_body(body_id, account_id, item.body, item.cache, item.sort_fields)
                self._db.execute(
                    "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, "
                    "modseq, body_id, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (mailbox_id, first + n, epoch, tz, flags_text(normalize_flags(item.flags)),
                     modseq, body_id, save_time()))
            uids = list(range(first, first + len(items)))
            self._log(account_id, mailbox_id, modseq, ChangeKind.APPEND, uids)
        return uids

    async def append_many(self, mailbox_id: int, items: Sequence[AppendItem]) -> list[int]:
        """Add messages all or none, in one transaction (MULTIAPPEND, RFC 3502); their UIDs."""
        return await self._run(self._append_many, mailbox_id, items) if items else []

    def _messages(self, mailbox_id: int) -> list[MessageMeta]:
        rows = self._db.execute(META_SELECT + "WHERE m.mailbox_id = ? ORDER BY m.uid",
                                (mailbox_id,)).fetchall()
        return [meta(row) for row in rows]

    async def messages(self, mailbox_id: int) -> list[MessageMeta]:
        """Every message of the mailbox, ordered by UID (message sequence numbers are indexes + 1)."""
        return await self._run(self._messages, mailbox_id)

    def _store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                     mode: FlagMode, unchanged_since: int | None) -> StoreFlagsResult:
        wanted = normalize_flags(flags)
        with transaction(self._db):
            account_id = self._mailbox_row(mailbox_id)[1]
            merge = merge_flags(self._rows(mailbox_id, uids), wanted, mode, unchanged_since)
            if merge.to_write:
                modseq = self._bump(mailbox_id)
                self._db.executemany("UPDATE messages SET flags = ?, modseq = ? WHERE id = ?",
                                     merge.stamped(modseq))
                self._log(account_id, mailbox_id, modseq, ChangeKind.FLAGS,
                          [merge.updated[i].uid for _, i in merge.to_write])
        return StoreFlagsResult(merge.updated, merge.modified, merge.failed)

    async def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                          mode: FlagMode, unchanged_since: int | None = None) -> StoreFlagsResult:
        """IMAP STORE: change flags of the listed UIDs (missing UIDs are ignored).

        With `unchanged_since` (RFC 7162 CONDSTORE) a message whose MODSEQ is greater is left alone
        and listed in `modified`. Messages whose flags really change share one new MODSEQ.
        """
        run = self._quick if len(uids) <= INLINE_ROWS else self._run
        return await run(self._store_flags, mailbox_id, list(uids), flags, mode, unchanged_since)

    def _copy(self, src: int, uids: Sequence[int], dst: int, move: bool) -> list[tuple[int, int]]:
        with transaction(self._db):
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

    def _expunge(self, mailbox_id: int, uids: Sequence[int], only_deleted: bool) -> list[int]:
        with transaction(self._db):
            account_id = self._mailbox_row(mailbox_id)[1]
            rows = self._rows(mailbox_id, uids)
            if only_deleted:
                rows = [row for row in rows if "\\Deleted" in flags_set(row[5])]
            self._expunge_rows(mailbox_id, account_id, rows)
        return [int(row[2]) for row in rows]

    async def expunge(self, mailbox_id: int, uids: Sequence[int],
                      only_deleted: bool = False) -> list[int]:
        """Remove the listed messages (the IMAP layer picks those with \\Deleted); returns the UIDs
        removed. With `only_deleted`, only those that carry \\Deleted when the transaction runs
        (another session may have just removed the flag). The UIDL stays known, so ingest never
        brings an expunged message back. Their bodies stay readable until `collect_bodies`
        (sessions not yet told, RFC 2180 4.1.1)."""
        run = self._quick if len(uids) <= INLINE_ROWS else self._run
        return await run(self._expunge, mailbox_id, list(uids), only_deleted)

    def _recent_floor(self, mailbox_id: int, claim_upto: int | None) -> int:
        if claim_upto is None:
            return int(self._mailbox_row(mailbox_id)[4])
        with transaction(self._db):
            floor = int(self._mailbox_row(mailbox_id)[4])
            if claim_upto >= floor:
                self._db.execute("UPDATE mailboxes SET recent_uid = ? WHERE id = ?",
                                 (claim_upto + 1, mailbox_id))
        return floor

    async def recent_floor(self, mailbox_id: int, claim_upto: int | None = None) -> int:
        """The lowest UID not yet \\Recent in any session (RFC 3501 2.3.2); with `claim_upto`, the
        UIDs from there up to `claim_upto` are claimed (atomically, exactly once) by the caller."""
        return await self._quick(self._recent_floor, mailbox_id, claim_upto)

    def _changes_since(self, mailbox_id: int, modseq: int, limit: int = -1) -> list[Change]:
        if modseq + 1 < self._mailbox_row(mailbox_id)[5]:
            raise ChangesPruned(f"changes before MODSEQ {modseq + 1} were pruned")
        rows = self._db.execute("SELECT modseq, kind, uid FROM changes WHERE mailbox_id = ? "
                                "AND modseq > ? ORDER BY id LIMIT ?",
                                (mailbox_id, modseq, limit)).fetchall()
        return [Change(m, ChangeKind(kind), uid) for m, kind, uid in rows]

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[Change]:
        """Changes with MODSEQ greater than `modseq`, oldest first; ChangesPruned when some of
        them were pruned (`prune_changes`)."""
        # Quick when there are few (the usual case); more than that are read in the worker
        changes = await self._quick(self._changes_since, mailbox_id, modseq, INLINE_ROWS + 1)
        if len(changes) <= INLINE_ROWS:
            return changes
        return await self._run(self._changes_since, mailbox_id, modseq)

    def _prune_changes(self, mailbox_id: int, below: int) -> int:
        with transaction(self._db):
            floor = self._mailbox_row(mailbox_id)[5]
            if below <= floor:
                return 0
            deleted = self._db.execute("DELETE FROM changes WHERE mailbox_id = ? AND modseq < ?",
                                       (mailbox_id, below)).rowcount
            self._db.execute("UPDATE mailboxes SET changes_floor = ? WHERE id = ?",
                             (below, mailbox_id))
        return deleted

    async def prune_changes(self, mailbox_id: int, below: int) -> int:
        """Forget change-log rows with MODSEQ below `below`; returns how many."""
        return await self._run(self._prune_changes, mailbox_id, below)

    def _messages_by_uid(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        out: list[MessageMeta] = []
        for chunk in chunks(sorted(set(uids))):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                META_SELECT + f"WHERE m.mailbox_id = ? AND m.uid IN ({marks}) ORDER BY m.uid",
                (mailbox_id, *chunk)).fetchall()
            out.extend(meta(row) for row in rows)
        return out

    async def messages_by_uid(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        """The listed messages that exist, ordered by UID (an index refresh after changes)."""
        run = self._quick if len(uids) <= INLINE_ROWS else self._run
        return await run(self._messages_by_uid, mailbox_id, list(uids))
