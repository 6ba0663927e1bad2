"""A per-account, in-memory index of each mailbox's messages, so SELECT, STATUS and the hub's
"new messages" snapshots do not reload a whole mailbox from the store.

Theory of operation: a `Snapshot` is the list of a mailbox's `MessageMeta` (ascending UID) as of
a MODSEQ. Every change to a mailbox's messages takes a new MODSEQ in the store (RFC 7162 3.1.1),
whoever made it (this process, another process sharing the store file), so a snapshot is current
exactly when its MODSEQ equals the mailbox's HIGHESTMODSEQ, which `store.get_mailbox()` returns
in the same cheap query as the counts. When it is behind, the store's change log
(`changes_since`) says which UIDs were expunged and which must be re-read (`messages_by_uid`);
only when that is a large part of the mailbox is it reloaded whole.

Snapshots are immutable once published (a refresh builds a new one), so sessions can share them
and derived values (first unseen, unseen count, keywords) are computed once per snapshot. One
trio lock per mailbox keeps 200 sessions selecting at once from refreshing 200 times.

The index also remembers the mailbox last read under each name (`known`, `remember`), so SELECT
can subscribe to the hub *before* its one `get_mailbox` call (then that call's HIGHESTMODSEQ is
as new as the subscription); a guess that turns out wrong (renamed, deleted and re-created:
another id or UIDVALIDITY) costs one more store call, never a wrong view.
"""

from __future__ import annotations

from typing import Sequence

import trio

from ...store import ChangeKind, ChangesPruned, Mailbox, MessageMeta
from ._message_map import MessageMap, uid_array

FULL_RELOAD_FRACTION = 4     # more than 1/4 of the mailbox changed: reload it whole


class Snapshot:
    """`metas` ascending by UID, `uids` their UIDs (compact, `_message_map`); never changed once
    built: each view selecting the mailbox starts from its own `messages()` copy."""

    __slots__ = ("mailbox_id", "modseq", "metas", "uids", "_derived")

    def __init__(self, mailbox_id: int, modseq: int, metas: list[MessageMeta]):
        self.mailbox_id, self.modseq, self.metas = mailbox_id, modseq, metas
        self.uids = uid_array(m.uid for m in metas)
        self._derived: tuple[int | None, int, list[str]] | None = None

    def messages(self) -> MessageMap:
        """A view's own map of these messages: two C-level copies, no per-message work."""
        return MessageMap(self.metas.copy(), self.uids[:])

    def _derive(self) -> tuple[int | None, int, list[str]]:
        if self._derived is None:
            first, unseen, keywords = None, 0, set()
            for index, meta in enumerate(self.metas):
                flags = meta.flags
                if "\\Seen" not in flags:
                    unseen += 1
                    if first is None:
                        first = index + 1
                for flag in flags:
                    if flag[:1] != "\\":
                        keywords.add(flag)
            self._derived = (first, unseen, sorted(keywords))
        return self._derived

    @property
    def first_unseen(self) -> int | None:
        return self._derive()[0]

    @property
    def unseen(self) -> int:
        return self._derive()[1]

    @property
    def keywords(self) -> list[str]:
        return self._derive()[2]


class MailboxIndex:
    """Snapshots by mailbox id; see the module docstring."""

    def __init__(self) -> None:
        self._snapshots: dict[int, Snapshot] = {}
        self._locks: dict[int, trio.Lock] = {}
        self._by_name: dict[str, Mailbox] = {}

    def known(self, name: str) -> Mailbox | None:
        """The mailbox last read under `name` (it may have been renamed or deleted since)."""
        return self._by_name.get(name)

    def remember(self, name: str, box: Mailbox | None) -> None:
        if box is None:
            self._by_name.pop(name, None)
        else:
            self._by_name[name] = box

    async def snapshot(self, store, box: Mailbox) -> Snapshot:
        """A snapshot at least as new as `box` (a `get_mailbox` result)."""
        return await self.snapshot_at(store, box.id, box.highest_modseq)

    async def latest(self, store, mailbox_id: int) -> Snapshot:
        """A snapshot with every change committed so far (after this session's own change)."""
        return await self.snapshot_at(store, mailbox_id, await store.highest_modseq(mailbox_id))

    async def snapshot_at(self, store, mailbox_id: int, modseq: int) -> Snapshot:
        current = self._snapshots.get(mailbox_id)
        if current is not None and current.modseq >= modseq:
            return current
        lock = self._locks.setdefault(mailbox_id, trio.Lock())
        async with lock:
            current = self._snapshots.get(mailbox_id)
            if current is not None and current.modseq >= modseq:
                return current
            fresh = await self._refresh(store, mailbox_id, modseq, current)
            if self._locks.get(mailbox_id) is lock:   # (else forgotten meanwhile: `forget`)
                self._snapshots[mailbox_id] = fresh
            return fresh

    def modseq(self, mailbox_id: int) -> int | None:
        """The MODSEQ of the snapshot held for the mailbox (its next refresh reads the log from
        there), or None."""
        current = self._snapshots.get(mailbox_id)
        return None if current is None else current.modseq

    def forget(self, mailbox_id: int) -> None:
        """The mailbox was deleted (or renamed elsewhere): its snapshot is not kept for nothing
        (a deleted mailbox of 10,000 messages held a few MB for the life of the process)."""
        self._snapshots.pop(mailbox_id, None)
        # its lock too: a refresh still under it then keeps its snapshot to itself (one kept
        # after the DELETE would stay for nothing); a later one takes a new lock
        self._locks.pop(mailbox_id, None)

    def __contains__(self, mailbox_id: int) -> bool:
        """Whether a snapshot of the mailbox is kept."""
        return mailbox_id in self._snapshots

    async def _refresh(self, store, mailbox_id: int, modseq: int, old: Snapshot | None) -> Snapshot:
        if old is not None:
            try:
                changes = await store.changes_since(mailbox_id, old.modseq)
            except ChangesPruned:   # the log no longer reaches back to this snapshot
                changes = None
            if changes is not None and len(changes) <= max(64, len(old.metas) // FULL_RELOAD_FRACTION):
                return await self._apply(store, old, changes)
        metas = await store.messages(mailbox_id)
        # The rows may already show changes newer than `modseq`; recording the older MODSEQ
        # only means the next refresh re-reads them (re-reading is idempotent).
        return Snapshot(mailbox_id, modseq, metas)

    async def _apply(self, store, old: Snapshot, changes: Sequence) -> Snapshot:
        gone = {c.uid for c in changes if c.kind is ChangeKind.EXPUNGE}
        reread = sorted({c.uid for c in changes if c.kind is not ChangeKind.EXPUNGE} - gone)
        rows = await store.messages_by_uid(old.mailbox_id, reread) if reread else []
        fresh = {m.uid: m for m in rows}
        metas = [fresh.pop(m.uid, m) for m in old.metas if m.uid not in gone]
        metas += sorted(fresh.values(), key=lambda m: m.uid)   # new UIDs exceed all older ones
        if fresh and len(metas) > len(fresh) and metas[-len(fresh) - 1].uid > metas[-len(fresh)].uid:
            metas.sort(key=lambda m: m.uid)
        modseq = max([old.modseq] + [c.modseq for c in changes])
        return Snapshot(old.mailbox_id, modseq, metas)
