"""A session's picture of its selected mailbox (RFC 3501 2.3.1.2, 5.2, 7.4.1).

Theory of operation: the view is what the *client* has been told. Sequence numbers are indexes
into `uids` + 1 and change only when this session sends EXISTS or EXPUNGE. Changes made by
others arrive from the hub as events (`notify`, synchronous) and wait in `pending` until
`updates()` turns them into untagged responses at a moment the RFC allows:

* new messages (EXISTS, RECENT) and flag changes (FETCH FLAGS): after any command;
* expunges: never while answering FETCH, STORE or SEARCH (7.4.1), so a message another session
  expunged keeps its sequence number here until a command that may shift numbers completes.
  Such a message stays in `uids` (its metadata is remembered), its body may be gone.
"""

from __future__ import annotations

import bisect
import dataclasses

import trio

from ...store import Mailbox, MessageMeta
from ._args import compress, flag_list
from .hub import EventKind, MailboxEvent


class SelectedView:
    """Selected-state data of one session (see the module docstring)."""

    def __init__(self, mailbox: Mailbox, metas: list[MessageMeta], read_only: bool,
                 recent: set[int]):
        self.mailbox_id = mailbox.id
        self.name = mailbox.name
        self.uidvalidity = mailbox.uidvalidity
        self.read_only = read_only
        self.uids = [m.uid for m in metas]
        self.meta = {m.uid: m for m in metas}
        self.recent = recent & set(self.meta)
        self.pending: list[MailboxEvent] = []
        self.expunged: set[int] = set()        # gone from the store, not yet announced
        self.gone = False
        self.wakeup = trio.Event()
        self.latencies: list[float] = []       # publish -> delivery, for the metrics
        self.condstore = False                 # RFC 7162 3.1.4: MODSEQ in every FETCH with FLAGS
        self.qresync = False                   # RFC 7162 3.2.10: VANISHED instead of EXPUNGE

    # ---- hub side ---------------------------------------------------------------------------
    def notify(self, event: MailboxEvent) -> None:
        self.pending.append(event)
        self.wakeup.set()

    # ---- lookups ----------------------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        return index + 1 if index < len(self.uids) and self.uids[index] == uid else None

    def flags_of(self, uid: int) -> frozenset[str]:
        flags = self.meta[uid].flags
        return flags | {"\\Recent"} if uid in self.recent else flags

    def fetch_flags_line(self, seq: int, uid: int, with_uid: bool = True) -> bytes:
        """`seq FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])` for an unsolicited or STORE response."""
        # RFC 7162 3.1: with CONDSTORE enabled every untagged FETCH carries UID and MODSEQ
        with_uid = with_uid or self.condstore
        line = b"%d FETCH (" % seq + (b"UID %d " % uid if with_uid else b"")
        line += b"FLAGS " + flag_list(self.flags_of(uid))
        if self.condstore:
            line += b" MODSEQ (%d)" % self.meta[uid].modseq
        return line + b")"

    def expunge_lines(self, uids) -> list[bytes]:
        """Forget expunged messages; EXPUNGE per message (highest first, so no number shifts
        under the client, RFC 3501 7.4.1), or one VANISHED (RFC 7162 3.2.10) with QRESYNC."""
        gone = [uid for uid in sorted(uids, reverse=True) if self.seq_of(uid) is not None]
        if self.qresync:
            for uid in gone:
                self.remove(uid)
            return [b"VANISHED " + compress(sorted(gone))] if gone else []
        return [b"%d EXPUNGE" % seq for uid in gone if (seq := self.remove(uid)) is not None]

    def seqs_for(self, ranges: list[tuple[int, int]]) -> list[int]:
        """Sequence numbers in `ranges` (already resolved), ascending, deduplicated."""
        wanted: set[int] = set()
        for lo, hi in ranges:
            wanted.update(range(max(lo, 1), min(hi, self.exists) + 1))
        return sorted(wanted)

    def seqs_for_uids(self, ranges: list[tuple[int, int]]) -> list[int]:
        out: list[int] = []
        for lo, hi in ranges:
            start = bisect.bisect_left(self.uids, lo)
            end = bisect.bisect_right(self.uids, hi)
            out.extend(range(start + 1, end + 1))
        return sorted(set(out))

    # ---- local changes (this session's own commands) -----------------------------------------
    def set_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        meta = self.meta.get(uid)
        if meta is not None and modseq >= meta.modseq:
            self.meta[uid] = dataclasses.replace(meta, flags=flags, modseq=modseq)

    def remove(self, uid: int) -> int | None:
        """Forget an expunged message now; returns the sequence number it had."""
        seq = self.seq_of(uid)
        if seq is not None:
            del self.uids[seq - 1]
            self.meta.pop(uid, None)
            self.recent.discard(uid)
            self.expunged.discard(uid)
        return seq

    # ---- others' changes ---------------------------------------------------------------------
    def updates(self, allow_expunge: bool) -> list[bytes]:
        """Apply pending events; the untagged responses (without CRLF) to send now."""
        events, self.pending = self.pending, []
        self.wakeup = trio.Event()
        added = 0
        changed: dict[int, None] = {}
        for event in events:
            self.latencies.append(event.published)
            if event.kind is EventKind.APPEND:
                for meta in event.metas:
                    if meta.uid > self.max_uid:
                        self.uids.append(meta.uid)
                        self.meta[meta.uid] = meta
                        self.recent.add(meta.uid)
                        added += 1
            elif event.kind is EventKind.FLAGS:
                for uid, flags, modseq in event.updates:
                    known = self.meta.get(uid)
                    if known is not None and modseq > known.modseq:
                        self.meta[uid] = dataclasses.replace(known, flags=flags, modseq=modseq)
                        changed[uid] = None
            elif event.kind is EventKind.EXPUNGE:
                self.expunged.update(uid for uid in event.uids if uid in self.meta)
            else:
                self.gone = True
        lines = []
        if allow_expunge and self.expunged:
            lines += self.expunge_lines(set(self.expunged))
        if added:
            lines += [b"%d EXISTS" % self.exists, b"%d RECENT" % len(self.recent)]
        for uid in changed:
            seq = self.seq_of(uid)
            if seq is not None:
                lines.append(self.fetch_flags_line(seq, uid))
        return lines
