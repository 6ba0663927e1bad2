"""The messages of one selected mailbox in sequence-number order (RFC 3501 2.3.1.2): the only
map between sequence numbers, UIDs and each message's `MessageMeta` that a view keeps.

Theory of operation: every IMAP session that selects a mailbox keeps its own picture of it,
because sequence numbers change only when *that* session is told of an EXISTS or EXPUNGE (RFC
3501 7.4.1, RFC 2180 4.1). With 30 sessions on a 100,000-message mailbox a dict UID -> meta per
session cost about 5.9 MB each (the hash table; the metas themselves are shared). Here a session
keeps two aligned sequences instead:

* `_uids`: the UIDs, ascending, in an `array('I')` (4 bytes each; RFC 3501 9: a UID is a 32-bit
  nz-number). Sequence number n is index n - 1; the sequence number of a UID is a binary search.
* `_metas`: the `MessageMeta` of each, in the same order (one pointer each; the objects are
  shared with the mailbox index and with every other view, `SelectedView._flag_event`).

About 12 bytes per message instead of about 59. Sequence number -> UID or meta is O(1) (FETCH
1:*), UID -> sequence number or meta is O(log n) (UID commands, others' flag changes), except
that the neighbours of the last UID found are tried first (`_index`): the changes of a STORE
1:* or an EXPUNGE come in UID order, ascending or descending, and then cost one comparison
each. Copying a map (SELECT: `copy` of the index's snapshot) is two C-level copies, no
per-message work.

Sequence sets are resolved here in time bounded by the map's size plus the number of ranges
(ranges are merged first; any order, reversed or far past the end), never by the numbers the
client wrote: `1:4294967295` costs what `1:*` costs.

Removing many messages at once (an EXPUNGE of 10,000) is one pass (`remove_many`), not one
memmove per message.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Sequence

from ...store import MessageMeta
from ..numbers import merge

UID_TYPECODE = "I"   # unsigned 32 bits on every platform CPython supports (checked below)
assert array(UID_TYPECODE).itemsize == 4


def uid_array(uids: Iterable[int] = ()) -> array:
    """UIDs as the compact array a `MessageMap` keeps."""
    return array(UID_TYPECODE, uids)


def merged(ranges: Iterable[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """`ranges` (each in either order) clamped to low..high, sorted and merged: disjoint,
    ascending, non-adjacent. O(r log r) in the number of ranges, whatever their bounds."""
    spans = ((max(min(a, b), low), min(max(a, b), high)) for a, b in ranges)
    return merge([(lo, hi) for lo, hi in spans if lo <= hi])


class MessageMap:
    """Sequence number <-> UID <-> meta of one view (see the module docstring). Sequence
    numbers are 1-based; a sequence number out of 1..len is an IndexError, a UID not shown is
    None (`seq_of`, `get`) or a KeyError (`meta_of`)."""

    __slots__ = ("_uids", "_metas", "_last")

    def __init__(self, metas: Sequence[MessageMeta] = (), uids: array | None = None):
        """`metas` in ascending UID order; `uids` their UIDs when the caller has them already
        (both are taken as they are, not copied: `copy` copies)."""
        self._metas = metas if isinstance(metas, list) else list(metas)
        self._uids = uids if uids is not None else uid_array(m.uid for m in self._metas)
        if len(self._uids) != len(self._metas):
            raise ValueError("UIDs and metas differ in length")
        self._last = 0   # index of the last UID found (`_index`); only ever a hint

    def copy(self) -> MessageMap:
        return MessageMap(self._metas.copy(), self._uids[:])

    # ---- size and membership -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._uids)

    def __bool__(self) -> bool:
        return bool(self._uids)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._index(uid) is not None

    def __iter__(self) -> Iterator[int]:
        """The UIDs, ascending (sequence number order)."""
        return iter(self._uids)

    @property
    def max_uid(self) -> int:
        return self._uids[-1] if self._uids else 0

    def nbytes(self) -> int:
        """What this map itself holds (the metas are shared), for the benchmarks."""
        return (self._uids.buffer_info()[1] * self._uids.itemsize
                + self._metas.__sizeof__() + self.__sizeof__())

    # ---- lookups ---------------------------------------------------------------------------
    def _index(self, uid: int) -> int | None:
        uids, last = self._uids, self._last
        # the next or previous message of the last one found (UIDs are unique, so a match
        # there is the answer whatever changed since; a hint that is out of range is skipped)
        if last + 1 < len(uids) and uids[last + 1] == uid:
            self._last = last + 1
            return last + 1
        if last < len(uids) and uids[last] == uid:
            return last
        if 0 < last <= len(uids) and uids[last - 1] == uid:
            self._last = last - 1
            return last - 1
        index = bisect.bisect_left(uids, uid)
        if index < len(uids) and uids[index] == uid:
            self._last = index
            return index
        return None

    def seq_of(self, uid: int) -> int | None:
        index = self._index(uid)
        return None if index is None else index + 1

    def uid_at(self, seq: int) -> int:
        if seq < 1:
            raise IndexError(seq)
        return self._uids[seq - 1]

    def meta_at(self, seq: int) -> MessageMeta:
        if seq < 1:
            raise IndexError(seq)
        return self._metas[seq - 1]

    def get(self, uid: int) -> MessageMeta | None:
        index = self._index(uid)
        return None if index is None else self._metas[index]

    def meta_of(self, uid: int) -> MessageMeta:
        index = self._index(uid)
        if index is None:
            raise KeyError(uid)
        return self._metas[index]

    def uids_at(self, seqs: Iterable[int]) -> list[int]:
        """The UIDs of sequence numbers `seqs`, in their order; each must be in 1..len (the
        callers' come from `seqs_in` and its siblings)."""
        uids = self._uids
        return [uids[q - 1] for q in seqs]

    def metas_at(self, seqs: Iterable[int]) -> list[MessageMeta]:
        """The metas of sequence numbers `seqs` (as `uids_at`)."""
        metas = self._metas
        return [metas[q - 1] for q in seqs]

    def items(self) -> Iterator[tuple[int, int, MessageMeta]]:
        """(sequence number, UID, meta) of every message, in order."""
        return zip(range(1, len(self._uids) + 1), self._uids, self._metas, strict=True)

    def metas(self) -> list[MessageMeta]:
        """Every meta, in order (a copy: the map may change while the caller uses it)."""
        return self._metas.copy()

    def shown(self, uids: Iterable[int]) -> list[int]:
        """Those of `uids` this map shows, in their order."""
        return [uid for uid in uids if self._index(uid) is not None]

    def shown_metas(self, uids: set[int] | frozenset[int]) -> list[MessageMeta]:
        """The metas of those of `uids` this map shows, ascending: one pass over the map's
        UIDs between their lowest and highest, or, when those are many more than `uids`, one
        binary search per UID."""
        if not uids or not self._uids:
            return []
        start = bisect.bisect_left(self._uids, min(uids))
        end = bisect.bisect_right(self._uids, max(uids))
        if end - start <= len(uids) * 4:   # a short step each, against a search each
            inside = uids.__contains__
            return [self._metas[i] for i, uid in enumerate(self._uids[start:end], start)
                    if inside(uid)]
        found = sorted(i for uid in uids if (i := self._index(uid)) is not None)
        return [self._metas[i] for i in found]

    def shows_any(self, uids: set[int] | frozenset[int]) -> bool:
        """Whether any of `uids` is shown; stops at the first (as `shown_metas`, but the pass
        is C-level: it is chosen up to 16 UIDs of the map per UID asked)."""
        if not uids or not self._uids:
            return False
        start = bisect.bisect_left(self._uids, min(uids))
        end = bisect.bisect_right(self._uids, max(uids))
        if end - start <= len(uids) * 16:   # a C-level step each, against a search each
            return not uids.isdisjoint(self._uids[start:end])
        return any(self._index(uid) is not None for uid in uids)

    # ---- sequence sets (RFC 3501 9: sequence-set), already resolved to numbers ---------------
    def seqs_in(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        """Sequence numbers in `ranges` of sequence numbers (either order, clamped to 1..len),
        ascending, each once."""
        out: list[int] = []
        for lo, hi in merged(ranges, 1, len(self._uids)):
            out.extend(range(lo, hi + 1))
        return out

    def seqs_in_uid_ranges(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        """Sequence numbers of the messages whose UIDs lie in `ranges` (either order),
        ascending, each once."""
        out: list[int] = []
        uids = self._uids
        for lo, hi in merged(ranges, 1, max(self.max_uid, 1)):
            start, end = bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)
            out.extend(range(start + 1, end + 1))
        return out

    def seqs_of(self, uids: Iterable[int]) -> list[int]:
        """Sequence numbers of those of `uids` shown, ascending, each once."""
        return sorted({i + 1 for uid in uids if (i := self._index(uid)) is not None})

    def missing(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The UID ranges inside `ranges` (ascending, disjoint) that no message has."""
        out = []
        uids = self._uids
        for lo, hi in ranges:
            start = bisect.bisect_left(uids, lo)
            end = bisect.bisect_right(uids, hi)
            cursor = lo
            for uid in uids[start:end]:
                if uid > cursor:
                    out.append((cursor, uid - 1))
                cursor = uid + 1
            if cursor <= hi:
                out.append((cursor, hi))
        return out

    # ---- changes ---------------------------------------------------------------------------
    def replace_at(self, seq: int, meta: MessageMeta) -> None:
        """`meta` (new flags, MODSEQ) in place of the message at `seq`, which has its UID."""
        if seq < 1 or self._uids[seq - 1] != meta.uid:
            raise ValueError(f"UID {meta.uid} is not at {seq}")
        self._metas[seq - 1] = meta

    def append(self, meta: MessageMeta) -> None:
        """A new message; its UID must exceed every UID shown (RFC 3501 2.3.1.1: UIDs ascend)."""
        if self._uids and meta.uid <= self._uids[-1]:
            raise ValueError(f"UID {meta.uid} is not above {self._uids[-1]}")
        self._uids.append(meta.uid)
        self._metas.append(meta)

    def remove(self, uid: int) -> int | None:
        """Forget one message; the sequence number it had, or None when not shown."""
        index = self._index(uid)
        if index is None:
            return None
        del self._uids[index]
        del self._metas[index]
        return index + 1

    def remove_many(self, uids: Iterable[int]) -> list[tuple[int, int]]:
        """Forget the messages of `uids` that are shown; returns (UID, sequence number) highest
        first, each number as it is once the higher ones are gone: the order and numbers of
        EXPUNGE responses (RFC 3501 7.4.1). Consecutive messages go as one run; the runs are
        cut out in place, highest first, unless that would move more than a few times the
        map's size (many runs low in a large map): then the map is rebuilt in one pass."""
        found = sorted({i for uid in uids if (i := self._index(uid)) is not None})
        if not found:
            return []
        gone = [(self._uids[i], i + 1) for i in reversed(found)]
        runs: list[list[int]] = []   # [start, end) of consecutive indices, ascending
        for i in found:
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        size = len(self._uids)
        if sum(size - end for _, end in runs) <= 8 * size:   # what the cuts move, C-level
            for start, end in reversed(runs):
                del self._uids[start:end]
                del self._metas[start:end]
            return gone
        kept_uids, kept_metas = self._uids[:runs[0][0]], self._metas[:runs[0][0]]
        for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
            kept_uids += self._uids[end:start]
            kept_metas += self._metas[end:start]
        kept_uids += self._uids[runs[-1][1]:]
        kept_metas += self._metas[runs[-1][1]:]
        self._uids, self._metas = kept_uids, kept_metas
        return gone
