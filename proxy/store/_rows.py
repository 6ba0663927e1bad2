"""Row helpers shared by the SQLite and PostgreSQL stores: the text forms of flags and dates, a
message row -> `MessageMeta`, mailbox-name canonicalisation and the STORE flag merge.

Both schemas keep a message the same way (flags as one space-separated sorted text, INTERNALDATE
as epoch seconds plus the zone's offset in minutes, the save date as epoch seconds), so
everything here is pure Python over rows and the two stores differ only in how they run their
SQL.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Iterable, NamedTuple

from .base import INBOX, FlagMode, FlagUpdate, MessageMeta

__all__ = ["MESSAGE_COLUMNS", "META_SELECT", "FlagMerge", "canon", "flags_set", "flags_text",
           "from_date", "merge_flags", "meta", "save_time", "to_date"]

MESSAGE_COLUMNS = "id, mailbox_id, uid, internaldate, tz_minutes, flags, modseq, body_id, pop3_uidl"
# The columns `meta` reads, in its order; the caller appends WHERE/ORDER BY.
META_SELECT = ("SELECT m.id, m.mailbox_id, m.uid, m.internaldate, m.tz_minutes, m.flags, "
               "m.modseq, m.body_id, m.pop3_uidl, b.size, m.saved_at FROM messages m "
               "JOIN bodies b ON b.id = m.body_id ")


def canon(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1); every other name is kept as given."""
    return INBOX if name.upper() == INBOX else name


def flags_text(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


def flags_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


def to_date(epoch: int, tz_minutes: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone(dt.timedelta(minutes=tz_minutes)))


def from_date(value: dt.datetime | None) -> tuple[int, int]:
    """(epoch seconds, offset minutes); None is now, a naive time is UTC."""
    if value is None:
        value = dt.datetime.now(dt.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    offset = value.utcoffset() or dt.timedelta(0)
    return int(value.timestamp()), int(offset.total_seconds() // 60)


def meta(row: tuple[Any, ...]) -> MessageMeta:
    """One row of `META_SELECT` as a `MessageMeta`."""
    mid, mailbox, uid, epoch, tz, flags, modseq, body_id, uidl, size, saved = row
    return MessageMeta(mid, mailbox, uid, to_date(epoch, tz), size, flags_set(flags), modseq,
                       body_id, uidl, to_date(saved, 0))


def save_time() -> int:
    """The save time of a message stored now (SAVEDATE, RFC 8514): Unix seconds."""
    return int(time.time())


class FlagMerge(NamedTuple):
    """What a STORE does to the rows it names (`merge_flags`)."""

    updated: list[FlagUpdate]   # every row that passed UNCHANGEDSINCE, with its new flags
    modified: list[int]         # UIDs that failed it (RFC 7162 3.1.3 MODIFIED)
    to_write: list[tuple[int, int]]   # (message id, index in `updated`) whose flags really change
    failed: list[FlagUpdate]    # the rows that failed it, as stored (`changed` False)

    def stamped(self, modseq: int) -> list[tuple[str, int, int]]:
        """Give the changed entries of `updated` their new MODSEQ; (flags text, modseq, id) to write."""
        for _, index in self.to_write:
            self.updated[index] = self.updated[index]._replace(modseq=modseq)
        return [(flags_text(self.updated[i].flags), modseq, mid) for mid, i in self.to_write]


def merge_flags(rows: Iterable[tuple[Any, ...]], wanted: frozenset[str], mode: FlagMode,
                unchanged_since: int | None) -> FlagMerge:
    """Apply a STORE to message rows (`MESSAGE_COLUMNS` order): with `unchanged_since` (RFC 7162
    3.1.3) a row whose MODSEQ is greater is left alone and listed in `modified`."""
    merge = FlagMerge([], [], [], [])
    for row in rows:
        mid, uid, old, modseq = row[0], row[2], flags_set(row[5]), row[6]
        if unchanged_since is not None and modseq > unchanged_since:
            merge.modified.append(uid)
            merge.failed.append(FlagUpdate(uid, old, modseq, False))
            continue
        new = (old | wanted if mode is FlagMode.ADD else
               old - wanted if mode is FlagMode.REMOVE else wanted)
        merge.updated.append(FlagUpdate(uid, new, modseq, new != old))
        if new != old:
            merge.to_write.append((mid, len(merge.updated) - 1))
    return merge
