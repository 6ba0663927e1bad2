"""The message half of `PostgresStore`: rows, flags, copies, expunges and changes (reading and
replacing the sealed bodies, caches and sort fields is `PgBlobOps`, `_pg_blobs.py`).

Theory of operation: `PgMessageOps` is a mixin of `PostgresStore` (`postgres.py`). As in the
SQLite store, methods come in pairs: `_name(c, ...)` runs in a worker thread on a pooled
connection `c` inside ONE transaction (committed when it returns, rolled back when it raises),
`name(...)` is the async API that hands it to `self._run`.

Concurrency (several threads, several replicas): every write first locks the mailbox rows it
changes (`_lock`, `SELECT ... FOR UPDATE`, in id order so two MOVEs in opposite directions cannot
deadlock). So writes to one mailbox are serialized, each sees the previous one's commit (READ
COMMITTED takes a new snapshot per statement), MODSEQs and UIDs grow in commit order, and a flag
change is never lost to a concurrent one. Readers take no lock.

Every change takes a new MODSEQ (`_bump`), is logged in `changes` (`_log`, one row per UID) and
announced with `pg_notify(CHANNEL, "origin:account:mailbox:modseq")`, which PostgreSQL delivers to the
listeners of every replica when (and only if) the transaction commits (`_pg_notify.py`).

Bodies are shared by copies. An expunge leaves the body in place (a session not yet told may
still read it, RFC 2180 4.1.1) and records it as a possible orphan in the same transaction;
when it may be deleted, with sessions on several replicas, is `_pg_bodies.py`. Bodies and
cache blobs are sealed with associated data naming their account and body id, which is why
body ids are drawn from the sequence before the row is written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

import psycopg

from ._pg_blobs import PgBlobOps
from ._pg_bodies import ReplicaTiming, note_orphans, sweep
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

__all__ = ["PgMessageOps", "CHANNEL", "GONE"]

CHANNEL = "mailproxy_changes"
GONE = "gone"      # in place of the MODSEQ in a notification: the mailbox was deleted or renamed
Conn = psycopg.Connection[Any]


class PgMessageOps(PgBlobOps):
    """Message operations of `PostgresStore` (see the module docstring)."""

    _ring: KeyRing | None
    origin: str              # this process's tag on the change log and its notifications
    timing: ReplicaTiming    # ack interval and replica lease (`_pg_bodies.py`)

    # ---- helpers run in a worker thread, inside the caller's transaction -----------------------

    @staticmethod
    def _lock(c: Conn, *mailbox_ids: int) -> dict[int, int]:
        """Lock the mailboxes (id order); returns mailbox id -> account id."""
        rows = c.execute("SELECT id, account_id FROM mailboxes WHERE id = ANY(%s) ORDER BY id "
                         "FOR UPDATE", (sorted(set(mailbox_ids)),)).fetchall()
        found = dict(rows)
        for mailbox_id in mailbox_ids:
            if mailbox_id not in found:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return found

    @staticmethod
    def _bump(c: Conn, mailbox_id: int) -> int:
        row = c.execute("UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = %s "
                        "RETURNING highest_modseq", (mailbox_id,)).fetchone()
        assert row is not None
        return int(row[0])

    def _log(self, c: Conn, account_id: int, mailbox_id: int, modseq: int, kind: ChangeKind,
             uids: Sequence[int]) -> None:
        # one round trip: the rows and the notification (a data-modifying CTE always runs)
        c.execute("WITH logged AS (INSERT INTO changes(account_id, mailbox_id, modseq, kind, "
                  "uid, origin) SELECT %s, %s, %s, %s, u, %s FROM unnest(%s::bigint[]) AS u) "
                  "SELECT pg_notify(%s, %s)",
                  (account_id, mailbox_id, modseq, kind.value, self.origin, list(uids),
                   CHANNEL, f"{self.origin}:{account_id}:{mailbox_id}:{modseq}"))

    @staticmethod
    def _take_uids(c: Conn, mailbox_id: int, count: int) -> int:
        """Reserve `count` UIDs; returns the first."""
        row = c.execute("UPDATE mailboxes SET uidnext = uidnext + %s WHERE id = %s "
                        "RETURNING uidnext", (count, mailbox_id)).fetchone()
        assert row is not None
        return int(row[0]) - count

    @staticmethod
    def _body_ids(c: Conn, count: int) -> list[int]:
        return [r[0] for r in c.execute(
            "SELECT nextval(pg_get_serial_sequence('bodies', 'id')) FROM generate_series(1, %s)",
            (count,))]

    @staticmethod
    def _rows(c: Conn, mailbox_id: int, uids: Sequence[int]) -> list[tuple[Any, ...]]:
        return c.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = %s "
                         "AND uid = ANY(%s) ORDER BY uid", (mailbox_id, sorted(set(uids)))).fetchall()

    def _notify_gone(self, c: Conn, account_id: int, mailbox_ids: Sequence[int]) -> None:
        """Tell the other replicas that these mailboxes were deleted or renamed (their sessions
        with one selected are disconnected, `_pg_notify.py`)."""
        for mailbox_id in mailbox_ids:
            c.execute("SELECT pg_notify(%s, %s)",
                      (CHANNEL, f"{self.origin}:{account_id}:{mailbox_id}:{GONE}"))

    def _copy_rows(self, c: Conn, rows: list[tuple[Any, ...]], dst_mailbox_id: int,
                   dst_account: int) -> list[tuple[int, int]]:
        first = self._take_uids(c, dst_mailbox_id, len(rows))
        modseq = self._bump(c, dst_mailbox_id)
        pairs = [(row[2], first + i) for i, row in enumerate(rows)]
        c.cursor().executemany(
            "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
            "body_id, pop3_uidl, saved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(dst_mailbox_id, new, row[3], row[4], row[5], modseq, row[7], row[8], save_time())
             for row, (_, new) in zip(rows, pairs, strict=True)])
        self._log(c, dst_account, dst_mailbox_id, modseq, ChangeKind.APPEND, [n for _, n in pairs])
        return pairs

    def _expunge_rows(self, c: Conn, mailbox_id: int, account_id: int,
                      rows: list[tuple[Any, ...]]) -> None:
        if rows:
            modseq = self._bump(c, mailbox_id)
            # bodies stay: sessions not yet told may read them (RFC 2180 4.1.1, _pg_bodies.py)
            c.execute("DELETE FROM messages WHERE id = ANY(%s)", ([row[0] for row in rows],))
            note_orphans(c, [row[7] for row in rows])
            self._log(c, account_id, mailbox_id, modseq, ChangeKind.EXPUNGE, [row[2] for row in rows])

    # ---- messages -------------------------------------------------------------------------------

    def _append(self, c: Conn, mailbox_id: int, body: bytes, flags: Sequence[str],
                internaldate: dt.datetime | None, cache: bytes | None,
                sort_fields: bytes | None) -> int:
        epoch, tz = from_date(internaldate)
        account_id = self._lock(c, mailbox_id)[mailbox_id]
        [body_id] = self._body_ids(c, 1)
        self._insert_bodies(c, account_id, [(body_id, body, cache, sort_fields)])
        uid = self._take_uids(c, mailbox_id, 1)
        modseq = self._bump(c, mailbox_id)
        c.execute("INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                  "body_id, saved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                  (mailbox_id, uid, epoch, tz, flags_text(normalize_flags(flags)), modseq, body_id,
                   save_time()))
        self._log(c, account_id, mailbox_id, modseq, ChangeKind.APPEND, [uid])
        return uid

    async def append(self, mailbox_id: int, body: bytes, flags: Sequence[str] = (),
                     internaldate: dt.datetime | None = None, cache: bytes | None = None,
                     sort_fields: bytes | None = None) -> int:
        """Add a message (IMAP APPEND); returns its UID."""
        return int(await self._run(self._append, mailbox_id, body, list(flags), internaldate, cache,
                                   sort_fields))

    def _append_many(self, c: Conn, mailbox_id: int, items: Sequence[AppendItem]) -> list[int]:
        account_id = self._lock(c, mailbox_id)[mailbox_id]
        body_ids = self._body_ids(c, len(items))
        self._insert_bodies(c, account_id, [(body_id, item.body, item.cache, item.sort_fields)
                                            for body_id, item in zip(body_ids, items, strict=True)])
        first = self._take_uids(c, mailbox_id, len(items))
        modseq = self._bump(c, mailbox_id)
        rows = []
        for n, (body_id, item) in enumerate(zip(body_ids, items, strict=True)):
            epoch, tz = from_date(item.internaldate)
            rows.append((mailbox_id, first + n, epoch, tz, flags_text(normalize_flags(item.flags)),
                         modseq, body_id, save_time()))
        c.cursor().executemany(
            "INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
            "body_id, saved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
        uids = list(range(first, first + len(items)))
        self._log(c, account_id, mailbox_id, modseq, ChangeKind.APPEND, uids)
        return uids

    async def append_many(self, mailbox_id: int, items: Sequence[AppendItem]) -> list[int]:
        """Add messages all or none, in one transaction (MULTIAPPEND, RFC 3502); their UIDs."""
        if not items:
            return []
        return list(await self._run(self._append_many, mailbox_id, list(items)))

    async def messages(self, mailbox_id: int) -> list[MessageMeta]:
        """Every message of the mailbox, ordered by UID."""
        rows = await self._run(lambda c: c.execute(
            META_SELECT + "WHERE m.mailbox_id = %s ORDER BY m.uid", (mailbox_id,)).fetchall())
        return [meta(row) for row in rows]

    async def messages_by_uid(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        """The listed messages that exist, ordered by UID."""
        wanted = sorted(set(uids))
        rows = await self._run(lambda c: c.execute(
            META_SELECT + "WHERE m.mailbox_id = %s AND m.uid = ANY(%s) ORDER BY m.uid",
            (mailbox_id, wanted)).fetchall())
        return [meta(row) for row in rows]

    def _store_flags(self, c: Conn, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                     mode: FlagMode, unchanged_since: int | None) -> StoreFlagsResult:
        wanted = normalize_flags(flags)
        account_id = self._lock(c, mailbox_id)[mailbox_id]
        merge = merge_flags(self._rows(c, mailbox_id, uids), wanted, mode, unchanged_since)
        if merge.to_write:
            modseq = self._bump(c, mailbox_id)
            c.cursor().executemany("UPDATE messages SET flags = %s, modseq = %s WHERE id = %s",
                                   merge.stamped(modseq))
            self._log(c, account_id, mailbox_id, modseq, ChangeKind.FLAGS,
                      [merge.updated[i].uid for _, i in merge.to_write])
        return StoreFlagsResult(merge.updated, merge.modified, merge.failed)

    async def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Sequence[str],
                          mode: FlagMode, unchanged_since: int | None = None) -> StoreFlagsResult:
        """IMAP STORE; see `SqliteStore.store_flags` (same contract)."""
        result: StoreFlagsResult = await self._run(self._store_flags, mailbox_id, list(uids),
                                                   list(flags), mode, unchanged_since)
        return result

    def _copy(self, c: Conn, src: int, uids: Sequence[int], dst: int,
              move: bool) -> list[tuple[int, int]]:
        accounts = self._lock(c, src, dst)
        if accounts[src] != accounts[dst]:
            raise StoreError("cannot copy between accounts")
        rows = self._rows(c, src, uids)
        if not rows:
            return []
        pairs = self._copy_rows(c, rows, dst, accounts[dst])
        if move:
            self._expunge_rows(c, src, accounts[src], rows)
        return pairs

    async def copy(self, src_mailbox_id: int, uids: Sequence[int],
                   dst_mailbox_id: int) -> list[tuple[int, int]]:
        """IMAP COPY: (source UID, new UID) pairs in UID order, for COPYUID (RFC 4315)."""
        return list(await self._run(self._copy, src_mailbox_id, list(uids), dst_mailbox_id, False))

    async def move(self, src_mailbox_id: int, uids: Sequence[int],
                   dst_mailbox_id: int) -> list[tuple[int, int]]:
        """IMAP MOVE (RFC 6851): copy and expunge in one transaction."""
        return list(await self._run(self._copy, src_mailbox_id, list(uids), dst_mailbox_id, True))

    def _expunge(self, c: Conn, mailbox_id: int, uids: Sequence[int],
                 only_deleted: bool) -> list[int]:
        account_id = self._lock(c, mailbox_id)[mailbox_id]
        rows = self._rows(c, mailbox_id, uids)
        if only_deleted:   # read under the mailbox lock: a flag just removed elsewhere counts
            rows = [row for row in rows if "\\Deleted" in flags_set(row[5])]
        self._expunge_rows(c, mailbox_id, account_id, rows)
        return [row[2] for row in rows]

    async def expunge(self, mailbox_id: int, uids: Sequence[int],
                      only_deleted: bool = False) -> list[int]:
        """Remove the listed messages; returns the UIDs removed (their UIDLs stay known). With
        `only_deleted`, only those carrying \\Deleted when the transaction runs."""
        return list(await self._run(self._expunge, mailbox_id, list(uids), only_deleted))

    async def collect_bodies(self, body_ids: Sequence[int]) -> None:
        """Delete those of the bodies (no session of this process shows them) that no message
        refers to any more and that no other live replica may still show (`_pg_bodies.py`)."""
        if body_ids:
            await self._run(lambda c: sweep(c, self.timing.lease, only=list(body_ids),
                                            exclude=self.origin))

    @staticmethod
    def _recent_floor(c: Conn, mailbox_id: int, claim_upto: int | None) -> int:
        # the row lock (FOR UPDATE) makes a claim atomic across threads and processes
        row = c.execute("SELECT recent_uid FROM mailboxes WHERE id = %s"
                        + ("" if claim_upto is None else " FOR UPDATE"), (mailbox_id,)).fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        floor = int(row[0])
        if claim_upto is not None and claim_upto >= floor:
            c.execute("UPDATE mailboxes SET recent_uid = %s WHERE id = %s",
                      (claim_upto + 1, mailbox_id))
        return floor

    async def recent_floor(self, mailbox_id: int, claim_upto: int | None = None) -> int:
        """The lowest UID not yet \\Recent in any session (RFC 3501 2.3.2); with `claim_upto`,
        the UIDs from there up to `claim_upto` are claimed (atomically, exactly once)."""
        floor: int = await self._run(self._recent_floor, mailbox_id, claim_upto)
        return floor

    @staticmethod
    def _changes_since(c: Conn, mailbox_id: int, modseq: int) -> list[Change]:
        row = c.execute("SELECT changes_floor FROM mailboxes WHERE id = %s",
                        (mailbox_id,)).fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        if modseq + 1 < row[0]:
            raise ChangesPruned(f"changes before MODSEQ {modseq + 1} were pruned")
        rows = c.execute("SELECT modseq, kind, uid FROM changes WHERE mailbox_id = %s "
                         "AND modseq > %s ORDER BY modseq, id", (mailbox_id, modseq)).fetchall()
        return [Change(m, ChangeKind(kind), uid) for m, kind, uid in rows]

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[Change]:
        """Changes with MODSEQ greater than `modseq`, oldest first; ChangesPruned when some of
        them were pruned (`prune_changes`)."""
        return list(await self._run(self._changes_since, mailbox_id, modseq))

    def _prune_changes(self, c: Conn, mailbox_id: int, below: int) -> int:
        self._lock(c, mailbox_id)
        row = c.execute("UPDATE mailboxes SET changes_floor = %s WHERE id = %s "
                        "AND changes_floor < %s RETURNING id", (below, mailbox_id, below)).fetchone()
        if row is None:
            return 0
        return c.execute("DELETE FROM changes WHERE mailbox_id = %s AND modseq < %s",
                         (mailbox_id, below)).rowcount

    async def prune_changes(self, mailbox_id: int, below: int) -> int:
        """Forget change-log rows with MODSEQ below `below`; returns how many."""
        return int(await self._run(self._prune_changes, mailbox_id, below))
