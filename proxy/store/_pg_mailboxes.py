"""The mailbox half of `PostgresStore`: LIST, CREATE, DELETE, RENAME, subscriptions and the
mailbox counters (UIDVALIDITY, HIGHESTMODSEQ).

Theory of operation: `PgMailboxOps` is a mixin between `PgMessageOps` (`_pg_messages.py`, whose
locking, change log and NOTIFY it uses) and `PostgresStore` (`postgres.py`, which provides the
pool and `_run`). DELETE and RENAME lock the mailbox row first, as every write does, and tell the
other replicas with a `gone` notification (their sessions with the mailbox selected are
disconnected, `_pg_notify.py`); a RENAME also tells this process's own change follower, so a
catch-up after a feed gap does not take it for a rename made elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._pg_bodies import note_orphans
from ._pg_messages import Conn, PgMessageOps
from ._rows import MESSAGE_COLUMNS, canon
from .base import (
    HIERARCHY_DELIMITER,
    INBOX,
    ChangeKind,
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    StoreError,
)

if TYPE_CHECKING:
    from ._pg_notify import ChangeFollower

__all__ = ["PgMailboxOps"]


class PgMailboxOps(PgMessageOps):
    """Mailbox operations of `PostgresStore` (see the module docstring)."""

    follower: ChangeFollower | None

    @staticmethod
    def _mailbox_id(c: Conn, account_id: int, name: str, lock: bool = False) -> int:
        row = c.execute("SELECT id FROM mailboxes WHERE account_id = %s AND name = %s"
                        + (" FOR UPDATE" if lock else ""), (account_id, canon(name))).fetchone()
        if row is None:
            raise MailboxNotFound(f"mailbox {name!r} does not exist")
        return int(row[0])

    @staticmethod
    def _new_mailbox(c: Conn, account_id: int, name: str, special_use: str | None) -> int:
        """A new mailbox; its UIDVALIDITY is the clock, strictly above every earlier one."""
        row = c.execute(
            "WITH v AS (UPDATE accounts SET last_uidvalidity = GREATEST("
            "  extract(epoch FROM now())::bigint, last_uidvalidity + 1) WHERE id = %s "
            "  RETURNING last_uidvalidity) "
            "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity) "
            "SELECT %s, %s, %s, last_uidvalidity FROM v ON CONFLICT (account_id, name) DO NOTHING "
            "RETURNING id", (account_id, account_id, name, special_use)).fetchone()
        if row is None:
            raise MailboxExists(f"mailbox {name!r} already exists")
        return int(row[0])

    _MAILBOX_SELECT = (
        "SELECT mb.id, mb.account_id, mb.name, mb.special_use, mb.uidvalidity, mb.uidnext, "
        "mb.highest_modseq, "
        "(SELECT count(*) FROM messages m WHERE m.mailbox_id = mb.id) FROM mailboxes mb ")

    def _list_mailboxes(self, c: Conn, account_id: int, name: str | None = None) -> list[Mailbox]:
        args: list[object] = [account_id]
        where = "WHERE mb.account_id = %s"
        if name is not None:
            where, args = where + " AND mb.name = %s", [account_id, canon(name)]
        rows = c.execute(self._MAILBOX_SELECT + where + " ORDER BY mb.name COLLATE \"C\"",
                         args).fetchall()
        return [Mailbox(*r) for r in rows]

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return list(await self._run(self._list_mailboxes, account_id))

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        found = await self._run(self._list_mailboxes, account_id, name, read=True)
        return found[0] if found else None

    def _create_mailbox(self, c: Conn, account_id: int, name: str,
                        special_use: str | None) -> Mailbox:
        name = canon(name)
        self._new_mailbox(c, account_id, name, special_use)
        return self._list_mailboxes(c, account_id, name)[0]

    async def create_mailbox(self, account_id: int, name: str,
                             special_use: str | None = None) -> Mailbox:
        mailbox: Mailbox = await self._run(self._create_mailbox, account_id, name, special_use)
        return mailbox

    def _delete_mailbox(self, c: Conn, account_id: int, name: str) -> list[int]:
        if canon(name) == INBOX:
            raise StoreError("INBOX cannot be deleted")
        mailbox_id = self._mailbox_id(c, account_id, name, lock=True)
        bodies = sorted({r[0] for r in c.execute(
            "DELETE FROM messages WHERE mailbox_id = %s RETURNING body_id", (mailbox_id,))})
        note_orphans(c, bodies)
        c.execute("DELETE FROM changes WHERE mailbox_id = %s", (mailbox_id,))
        c.execute("DELETE FROM mailboxes WHERE id = %s", (mailbox_id,))
        self._notify_gone(c, account_id, [mailbox_id])
        return bodies

    async def delete_mailbox(self, account_id: int, name: str) -> list[int]:
        """Delete a mailbox and its messages (not its inferiors). INBOX cannot be deleted.
        Returns the messages' body ids (orphans, swept as an expunge's, `_pg_bodies.py`)."""
        bodies: list[int] = await self._run(self._delete_mailbox, account_id, name)
        return bodies

    def _rename_mailbox(self, c: Conn, account_id: int, old: str, new: str) -> dict[int, str]:
        old, new = canon(old), canon(new)
        if new == INBOX:
            raise MailboxExists("INBOX already exists")
        if new.startswith(old + HIERARCHY_DELIMITER):
            raise StoreError(f"cannot rename {old!r} to its own inferior {new!r}")
        mailbox_id = self._mailbox_id(c, account_id, old, lock=True)
        if c.execute("SELECT 1 FROM mailboxes WHERE account_id = %s AND name = %s",
                     (account_id, new)).fetchone():
            raise MailboxExists(f"mailbox {new!r} already exists")
        if old == INBOX:
            self._rename_inbox(c, account_id, mailbox_id, new)
            return {}
        prefix = old + HIERARCHY_DELIMITER
        renamed = c.execute("UPDATE mailboxes SET name = CASE WHEN id = %s THEN %s "
                            "ELSE %s || substr(name, %s) END "
                            "WHERE account_id = %s AND (id = %s OR left(name, %s) = %s) "
                            "RETURNING id, name",
                            (mailbox_id, new, new + HIERARCHY_DELIMITER, len(prefix) + 1,
                             account_id, mailbox_id, len(prefix), prefix)).fetchall()
        self._notify_gone(c, account_id, [r[0] for r in renamed])
        return dict(renamed)

    def _rename_inbox(self, c: Conn, account_id: int, inbox_id: int, new: str) -> None:
        """RFC 3501 6.3.5: move INBOX's messages to a new mailbox; INBOX stays, empty."""
        target = self._new_mailbox(c, account_id, new, None)
        rows = c.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = %s "
                         "ORDER BY uid", (inbox_id,)).fetchall()
        if rows:
            self._copy_rows(c, rows, target, account_id)
            modseq = self._bump(c, inbox_id)
            c.execute("DELETE FROM messages WHERE mailbox_id = %s", (inbox_id,))
            self._log(c, account_id, inbox_id, modseq, ChangeKind.EXPUNGE, [row[2] for row in rows])

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Rename a mailbox and its inferiors; renaming INBOX moves its messages (RFC 3501 6.3.5)."""
        renamed: dict[int, str] = await self._run(self._rename_mailbox, account_id, old, new)
        if self.follower is not None:   # not a rename missed by the feed (`_pg_notify.py`)
            self.follower.renamed_here(renamed)

    @staticmethod
    def _set_subscribed(c: Conn, account_id: int, name: str, subscribed: bool) -> None:
        sql = ("INSERT INTO subscriptions(account_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING"
               if subscribed else "DELETE FROM subscriptions WHERE account_id = %s AND name = %s")
        c.execute(sql, (account_id, canon(name)))

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """Add or remove a name, whether or not a mailbox has it (RFC 3501 6.3.6)."""
        await self._run(self._set_subscribed, account_id, name, subscribed)

    async def subscriptions(self, account_id: int) -> list[str]:
        rows = await self._run(lambda c: c.execute(
            "SELECT name FROM subscriptions WHERE account_id = %s ORDER BY name COLLATE \"C\"",
            (account_id,)).fetchall())
        return [row[0] for row in rows]

    async def _mailbox_value(self, mailbox_id: int, column: str) -> int:
        row = await self._run(lambda c: c.execute(
            f"SELECT {column} FROM mailboxes WHERE id = %s", (mailbox_id,)).fetchone(), read=True)
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return int(row[0])

    async def uidvalidity(self, mailbox_id: int) -> int:
        return await self._mailbox_value(mailbox_id, "uidvalidity")

    async def highest_modseq(self, mailbox_id: int) -> int:
        return await self._mailbox_value(mailbox_id, "highest_modseq")
