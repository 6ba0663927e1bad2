"""The mailbox half of `SqliteStore`: list, create, delete and rename mailboxes (with their
inferiors; renaming INBOX moves its messages, RFC 3501 6.3.5), subscriptions, UIDVALIDITY.

Theory of operation: `MailboxOps` is a mixin of `SqliteStore` (`sqlite.py`) over `MessageOps`
(`_sqlite_messages.py`), in the same pairs: `_name(...)` runs in the store's worker thread
against `self._db` (inside `transaction()` when it writes), `name(...)` is the async API that
hands it to `self._run` (or `self._quick`). A new mailbox takes a UIDVALIDITY above every one the
account ever had (`accounts.last_uidvalidity`), so a name deleted and created again never shows
a client old UIDs as valid (RFC 3501 2.3.1.1).
"""

from __future__ import annotations

import time

from ._rows import MESSAGE_COLUMNS, canon
from ._schema import transaction
from ._sqlite_messages import MessageOps, Row
from .base import (
    HIERARCHY_DELIMITER,
    INBOX,
    ChangeKind,
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    StoreError,
)

__all__ = ["MailboxOps"]


class MailboxOps(MessageOps):
    """Mailbox operations of `SqliteStore` (see the module docstring)."""

    # ---- helpers run in the worker thread -------------------------------------------------------

    def _mailbox_id(self, account_id: int, name: str) -> int:
        row = self._db.execute("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                               (account_id, canon(name))).fetchone()
        if row is None:
            raise MailboxNotFound(f"mailbox {name!r} does not exist")
        return int(row[0])

    def _next_uidvalidity(self, account_id: int) -> int:
        last: int = self._db.execute("SELECT last_uidvalidity FROM accounts WHERE id = ?",
                                     (account_id,)).fetchone()[0]
        value = max(int(time.time()), last + 1)
        self._db.execute("UPDATE accounts SET last_uidvalidity = ? WHERE id = ?", (value, account_id))
        return value

    def _new_mailbox(self, account_id: int, name: str, special_use: str | None) -> int:
        uidvalidity = self._next_uidvalidity(account_id)
        mailbox_id = self._db.execute(
            "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity) VALUES (?, ?, ?, ?)",
            (account_id, name, special_use, uidvalidity)).lastrowid
        assert mailbox_id is not None   # an INSERT of one row always sets lastrowid
        return mailbox_id

    # ---- mailboxes ------------------------------------------------------------------------------

    _MAILBOX_SELECT = (
        "SELECT mb.id, mb.account_id, mb.name, mb.special_use, mb.uidvalidity, mb.uidnext, "
        "mb.highest_modseq, (SELECT count(*) FROM messages m WHERE m.mailbox_id = mb.id) "
        "FROM mailboxes mb ")

    def _list_mailboxes(self, account_id: int, name: str | None = None) -> list[Mailbox]:
        args: list[int | str]
        where, args = "WHERE mb.account_id = ?", [account_id]
        if name is not None:
            where, args = where + " AND mb.name = ?", args + [canon(name)]
        rows = self._db.execute(self._MAILBOX_SELECT + where + " ORDER BY mb.name", args).fetchall()
        return [Mailbox(*r) for r in rows]

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return await self._run(self._list_mailboxes, account_id)

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        found = await self._quick(self._list_mailboxes, account_id, name)
        return found[0] if found else None

    def _create_mailbox(self, account_id: int, name: str, special_use: str | None) -> Mailbox:
        name = canon(name)
        with transaction(self._db):
            if self._db.execute("SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?",
                                (account_id, name)).fetchone():
                raise MailboxExists(f"mailbox {name!r} already exists")
            self._new_mailbox(account_id, name, special_use)
        return self._list_mailboxes(account_id, name)[0]

    async def create_mailbox(self, account_id: int, name: str,
                             special_use: str | None = None) -> Mailbox:
        return await self._run(self._create_mailbox, account_id, name, special_use)

    def _delete_mailbox(self, account_id: int, name: str) -> list[int]:
        if canon(name) == INBOX:
            raise StoreError("INBOX cannot be deleted")
        with transaction(self._db):
            mailbox_id = self._mailbox_id(account_id, name)
            bodies = [r[0] for r in self._db.execute(
                "SELECT DISTINCT body_id FROM messages WHERE mailbox_id = ?", (mailbox_id,))]
            self._db.execute("DELETE FROM messages WHERE mailbox_id = ?", (mailbox_id,))
            self._db.execute("DELETE FROM changes WHERE mailbox_id = ?", (mailbox_id,))
            self._db.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
        return bodies

    async def delete_mailbox(self, account_id: int, name: str) -> list[int]:
        """Delete a mailbox and its messages (not its inferiors). INBOX cannot be deleted.
        Returns the messages' body ids: a body shared with a copy elsewhere may still be shown
        by a session there after that copy's expunge (RFC 2180 4.1.1), so bodies wait for
        `collect_bodies` (or the sweep at the next open) as an expunge's do."""
        return await self._run(self._delete_mailbox, account_id, name)

    def _rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        old, new = canon(old), canon(new)
        if new == INBOX:
            raise MailboxExists("INBOX already exists")
        if new.startswith(old + HIERARCHY_DELIMITER):
            raise StoreError(f"cannot rename {old!r} to its own inferior {new!r}")
        with transaction(self._db):
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
        rows = self._db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? "
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
        sql = "INSERT OR IGNORE INTO subscriptions(account_id, name) VALUES (?, ?)" if subscribed \
            else "DELETE FROM subscriptions WHERE account_id = ? AND name = ?"
        with transaction(self._db):
            self._db.execute(sql, (account_id, canon(name)))

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """Add or remove a name, whether or not a mailbox has it (RFC 3501 6.3.6)."""
        await self._run(self._set_subscribed, account_id, name, subscribed)

    def _subscriptions(self, account_id: int) -> list[str]:
        rows = self._db.execute("SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name",
                                (account_id,)).fetchall()
        return [row[0] for row in rows]

    async def subscriptions(self, account_id: int) -> list[str]:
        return await self._run(self._subscriptions, account_id)

    def _uidvalidity(self, mailbox_id: int) -> int:
        return int(self._db.execute("SELECT uidvalidity FROM mailboxes WHERE id = ?",
                                    (mailbox_id,)).fetchone()[0])

    async def uidvalidity(self, mailbox_id: int) -> int:
        return await self._run(self._uidvalidity, mailbox_id)

    async def highest_modseq(self, mailbox_id: int) -> int:
        row: Row = await self._quick(self._mailbox_row, mailbox_id)
        return int(row[3])
