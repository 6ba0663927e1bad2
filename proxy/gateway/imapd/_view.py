"""A session's picture of its selected mailbox (RFC 3501 2.3.1.2, 5.2, 7.4.1; RFC 7162).

Theory of operation: the view is what the *client* has been told: its messages in sequence
number order with the flags and MODSEQ of each as last told (`messages`, a compact
`MessageMap`: one per session, so about 12 bytes per message), the keywords announced
with FLAGS (`keywords`), the \\Recent UIDs of this session. Sequence numbers change only when this
session sends EXISTS or EXPUNGE. Changes by others arrive from the hub (`notify`, synchronous)
and wait in `pending` until `updates()` turns them into untagged responses at a moment the RFC
allows:

* new messages: EXISTS (and RECENT) after any command, before any FETCH can name them; a message
  that arrives and is expunged before the session hears of either is never announced. New means
  above `top`, the highest UID the view ever held: the hub's announcement of a message may come
  after this session already had it (from its SELECT snapshot) and expunged or moved it itself,
  and must not bring it back;
* flag changes: FETCH FLAGS after any command, preceded by FLAGS/PERMANENTFLAGS when a keyword is
  new to this session (RFC 3501 7.2.6). A change may reach the view before the message it
  changes: the hub announces new messages with a snapshot read before its publication, and a
  flag change committed meanwhile is published first. Such a change is kept (`early_flags`) and
  applied to the message when it is announced, so the older snapshot never wins;
* expunges: never while answering FETCH, STORE or SEARCH (7.4.1). Until then the message keeps
  its sequence number, its flags here and its body in the store (RFC 2180 4.1.1: the view
  *keeps* the expunge's `Hold` at the hub until it shows none of its messages, `_settle`), so
  FETCH and SEARCH answer for it as before. EXPUNGE numbers are computed against what the
  client knows, highest first, after any EXISTS of the same batch.

An event of 10,000 changes reaches every view of the mailbox: `notify` only queues it (`keep`
of an expunge's hold is one check, the hub looks its bodies up once for all views), and
`update_slices` applies it in parts between which other sessions run (the session's own commands
wait: RFC 3501 7.4.1 holds across the parts). An arrival of 10,000 messages too: its EXISTS goes
out once all are applied; meanwhile those not applied yet wait in `arriving`, where `keep` and
`bodies_of` find them, so an expunge published during a pause still keeps their bodies.

Live SEARCH/SORT results (RFC 5267, `contexts`, `_context.py`) are told of every message that
arrives or changes flags here, and of expunges in `expunge_lines`, whose REMOVEFROM lines come
first (4.3.4).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from ...store import Mailbox, MessageMeta
from ...store.base import SYSTEM_FLAGS
from ._args import compress, flag_list
from ._index import Snapshot
from ._message_map import MessageMap
from .hub import EventKind, Hold, Hub, MailboxEvent

if TYPE_CHECKING:
    from ._context import Contexts

_UID = operator.attrgetter("uid")
_FLAGS = operator.attrgetter("flags")
EXPUNGE_BATCH = 500   # expunged messages a view forgets per slice (its own or others' expunge)
UPDATE_SLICE = 500    # others' flag changes a view applies, or tells, per slice

class SelectedView:
    """Selected-state data of one session (see the module docstring)."""

    def __init__(self, mailbox: Mailbox, metas: list[MessageMeta], read_only: bool,
                 recent: set[int], hub: Hub | None = None):
        self.hub = hub
        self.mailbox_id = mailbox.id
        self.name = mailbox.name
        self.uidvalidity = mailbox.uidvalidity
        self.read_only = read_only
        self.messages = MessageMap(metas)      # seq <-> UID <-> meta as the client knows them
        self.top = self.max_uid                # highest UID ever held; never lowered (docstring)
        self.recent = {uid for uid in recent if uid in self.messages}
        self.pending: list[MailboxEvent] = []
        self.expunged: set[int] = set()        # gone from the store, not yet announced
        self.early_flags: dict[int, tuple[frozenset[str], int]] = {}   # uid not announced yet
        self.loaded_modseq = 0                 # MODSEQ of the snapshot the view started from
        self.holds: list[Hold] = []            # expunges whose bodies this view keeps
        self.arriving: dict[int, MessageMeta] = {}   # new, being applied in parts (docstring)
        self.loaded = False                    # `load` done: `messages` is the snapshot
        self.keywords: set[str] = set()        # announced with FLAGS (RFC 3501 7.2.6)
        self.gone = False
        self.wakeup = trio.Event()
        self.latencies: list[float] = []       # publish -> delivery, for the metrics
        self.condstore = False                 # RFC 7162 3.1.4: MODSEQ in every FETCH with FLAGS
        self.qresync = False                   # RFC 7162 3.2.10: VANISHED instead of EXPUNGE
        self.rev2 = False                      # RFC 9051: no \Recent, no RECENT responses
        self.saved: list[int] = []             # RFC 5182 SEARCHRES result, as UIDs (`$`)
        self.contexts: Contexts | None = None   # RFC 5267 SEARCH/SORT RETURN (UPDATE) results

    # ---- hub side ---------------------------------------------------------------------------
    def notify(self, event: MailboxEvent) -> None:
        self.pending.append(event)
        self.wakeup.set()

    def keep(self, hold: Hold) -> bool:
        """The hub, in the publisher's step, before it notifies an expunge: keep `hold` (the
        bodies of its messages stay, RFC 2180 4.1.1) until this view shows none of them
        (`_settle`); False when it shows none already. Before `load` every hold is kept (the
        snapshot may show them). No scan when the first UID tried is shown or all are above
        anything the view held (the common cases: one check per view, whatever the size)."""
        if self.loaded and ((hold.low > self.top and not self.arriving) or self._shows_none(hold)):
            return False
        self.holds.append(hold)
        return True

    def _shows_none(self, hold: Hold) -> bool:
        # both stop at the first UID in common (`MessageMap.shows_any` for the costs)
        return not self.messages.shows_any(hold.uids) and self.arriving.keys().isdisjoint(hold.uids)

    def bodies_of(self, uids: set[int]) -> dict[int, int]:
        """uid -> body id of those of `uids` this view shows (none before `load`)."""
        if not self.loaded:
            return {}
        shown = {meta.uid: meta.body_id for meta in self.messages.shown_metas(uids)}
        if self.arriving:   # an arrival applied in parts: the rest are shown once it ends
            for uid in self.arriving.keys() & uids:
                shown.setdefault(uid, self.arriving[uid].body_id)
        return shown

    def _settle(self) -> None:
        """Let go of the holds none of whose messages this view shows any more."""
        if not self.holds or not self.loaded or self.hub is None:
            return
        kept = []
        for hold in self.holds:
            if self._shows_none(hold):
                self.hub.release(hold)
            else:
                kept.append(hold)
        self.holds = kept

    def load(self, snapshot: Snapshot) -> None:
        """The snapshot taken after subscribing; expunges already known keep the bodies it shows.
        The view's own copy of the snapshot's messages is two C-level copies (SELECT of a
        large mailbox stays cheap, `Snapshot.messages`)."""
        self.loaded_modseq = snapshot.modseq
        self.messages = snapshot.messages()
        self.top = max(self.top, self.max_uid)
        self.loaded = True
        if self.hub is not None:
            for hold in self.holds:   # expunges heard of while loading: what the snapshot shows
                if hold.unresolved:
                    self.hub.resolve(hold, self.bodies_of(hold.unresolved))
            self._settle()
            self.hub.loaded(self.mailbox_id)   # bodies deferred while loading (hub docstring)

    def close(self) -> None:
        """The session leaves the mailbox: nothing it showed needs keeping any more."""
        if self.hub is not None:
            for hold in self.holds:
                self.hub.release(hold)
        self.holds = []

    # ---- lookups ----------------------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.messages)

    @property
    def max_uid(self) -> int:
        return self.messages.max_uid

    def seq_of(self, uid: int) -> int | None:
        return self.messages.seq_of(uid)

    def flags_of(self, meta: MessageMeta) -> frozenset[str]:
        """The flags of a shown message as this session sees them (with its own \\Recent)."""
        flags = meta.flags
        return flags | {"\\Recent"} if meta.uid in self.recent else flags

    def fetch_flags_line(self, seq: int, with_uid: bool = True) -> bytes:
        """`seq FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])` of the message at `seq`, for an
        unsolicited or STORE response."""
        meta = self.messages.meta_at(seq)
        # RFC 7162 3.1: with CONDSTORE enabled every untagged FETCH carries UID and MODSEQ
        with_uid = with_uid or self.condstore
        line = b"%d FETCH (" % seq + (b"UID %d " % meta.uid if with_uid else b"")
        line += b"FLAGS " + flag_list(self.flags_of(meta))
        if self.condstore:
            line += b" MODSEQ (%d)" % meta.modseq
        return line + b")"

    def expunge_lines(self, uids) -> list[bytes]:
        """Forget expunged messages; EXPUNGE per message (highest first, so no number shifts
        under the client, RFC 3501 7.4.1), or one VANISHED (RFC 7162 3.2.10) with QRESYNC."""
        removals = []
        if self.contexts is not None:   # RFC 5267 4.3.4: REMOVEFROM (in numbers) goes first
            removals = self.contexts.removing(self, sorted(self.messages.shown(uids), reverse=True))
        removed = self._remove_many(uids)   # highest first, each numbered as sent
        gone = [uid for uid, _ in removed]
        if self.qresync:
            lines = removals + ([b"VANISHED " + compress(sorted(gone))] if gone else [])
        else:
            lines = removals + [b"%d EXPUNGE" % seq for _, seq in removed]
        self._settle()   # bodies of messages it no longer shows may go
        return lines

    def announce(self, flag_sets) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS when `flag_sets` hold keywords this session was not told of
        (RFC 3501 7.2.6: sent whenever the set of defined flags changes)."""
        distinct = set(flag_sets)   # a few distinct sets among 10,000 messages: C-level
        fresh = {f for flags in distinct for f in flags if f[:1] != "\\"} - self.keywords
        if not fresh:
            return []
        self.keywords |= fresh
        flags = list(SYSTEM_FLAGS) + sorted(self.keywords)
        lines = [b"FLAGS " + flag_list(flags)]
        if not self.read_only:
            lines.append(b"OK [PERMANENTFLAGS " + flag_list(flags + ["\\*"]) + b"] Flags permitted.")
        return lines

    def new_top(self) -> int:
        """The highest UID that pending events would add (0: none); for claiming \\Recent."""
        top = 0
        for event in self.pending:
            if event.kind is EventKind.APPEND and event.metas:
                top = max(top, event.metas[-1].uid)
        return top if top > self.top else 0

    # ---- local changes (this session's own commands) -----------------------------------------
    def set_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        seq = self.messages.seq_of(uid)
        if seq is None:
            return
        meta = self.messages.meta_at(seq)
        if modseq >= meta.modseq:
            self.messages.replace_at(seq, meta.with_flags(flags, modseq))
            if self.contexts is not None:
                self.contexts.flagged.add(uid)

    def remove(self, uid: int) -> int | None:
        """Forget an expunged message now; returns the sequence number it had."""
        seq = self.messages.remove(uid)
        if seq is not None:
            self.recent.discard(uid)
            self.expunged.discard(uid)
        return seq

    def _remove_many(self, uids: list[int]) -> list[tuple[int, int]]:
        """`remove` of each of `uids` in one pass (`MessageMap.remove_many`)."""
        removed = self.messages.remove_many(uids)
        for uid, _ in removed:
            self.recent.discard(uid)
            self.expunged.discard(uid)
        return removed

    # ---- others' changes ---------------------------------------------------------------------
    def updates(self, allow_expunge: bool, recent: tuple[int, int] | None = None) -> list[bytes]:
        """All of `update_slices` at once."""
        return [line for part in self.update_slices(allow_expunge, recent) for line in part]

    def update_slices(self, allow_expunge: bool,
                      recent: tuple[int, int] | None = None) -> Iterator[list[bytes]]:
        """Apply pending events; yields the untagged responses (without CRLF) to send now, in
        parts of about UPDATE_SLICE messages' work each (an event of 10,000 flag changes or
        expunges). Between two parts the caller may let other sessions run, never a command of
        this session: each part's EXPUNGE numbers count on the parts before it (RFC 3501
        7.4.1). Events published meanwhile wait in `pending` for the next call. New UIDs in the
        range `recent` were claimed as \\Recent for this session (`Hub.claim_recent`; UIDs
        that arrived while it was claiming are not in it)."""
        events, self.pending = self.pending, []
        self.wakeup = trio.Event()
        new: dict[int, MessageMeta] = {}
        changed: dict[int, int] = {}   # uid -> its sequence number when changed
        work = 0
        for event in events:
            self.latencies.append(event.published)
            if event.kind is EventKind.APPEND:
                # ascending UIDs (hub): the part above `top` in C-level steps when nothing
                # else is new yet (10,000 arrivals); otherwise the first announcement wins
                fresh = event.metas[bisect.bisect_right(event.metas, self.top, key=_UID):]
                if not new:
                    new.update(zip(map(_UID, fresh), fresh, strict=True))
                else:
                    for meta in fresh:
                        if meta.uid not in new:
                            new[meta.uid] = meta
            elif event.kind is EventKind.FLAGS:
                for uid, flags, modseq in event.updates:
                    self._flag_event(uid, flags, modseq, new, changed, event.shared)
                    work += 1
                    # no pause while a message waits in `new`: an expunge of it published
                    # meanwhile would find it neither shown nor arriving (`keep`)
                    if not work % UPDATE_SLICE and not new:
                        yield []
            elif event.kind is EventKind.EXPUNGE:
                for uid in event.uids:
                    self.early_flags.pop(uid, None)
                    if new.pop(uid, None) is None and uid in self.messages:
                        self.expunged.add(uid)   # never told of it: never announced
            else:
                self.gone = True
        lines = []
        if new:
            metas = sorted(self._with_early_flags(new), key=_UID)
            lines += self.announce(map(_FLAGS, metas))
            self.arriving = new   # `keep` finds these during a pause (module docstring)
            for n, meta in enumerate(metas, 1):
                self.messages.append(meta)
                if recent is not None and recent[0] <= meta.uid <= recent[1]:
                    self.recent.add(meta.uid)
                if not n % UPDATE_SLICE and n < len(metas):
                    yield []   # nothing told yet: the EXISTS below counts them all
            self.arriving = {}
            self.top = metas[-1].uid
            if self.contexts is not None:
                self.contexts.arrived.update(new)
            lines.append(b"%d EXISTS" % self.exists)
            if not self.rev2:   # RFC 9051 E.5: IMAP4rev2 has no RECENT response
                lines.append(b"%d RECENT" % len(self.recent))
        if allow_expunge and self.expunged:   # numbers against what the client knows now
            changed = dict.fromkeys(changed, 0)   # numbers shift: looked up again below
            for batch in self.expunge_batches(self.expunged):
                lines += self.expunge_lines(batch)
                yield lines
                lines = []
        present = [(seq, uid) for uid, known in changed.items()
                   if (seq := known or self.seq_of(uid)) is not None]
        if self.contexts is not None:
            self.contexts.flagged.update(uid for _, uid in present)
        lines += self.announce(self.messages.meta_at(seq).flags for seq, _ in present)
        for n, (seq, _) in enumerate(present, 1):
            lines.append(self.fetch_flags_line(seq))
            if not n % UPDATE_SLICE:
                yield lines
                lines = []
        if lines:
            yield lines

    def expunge_batches(self, gone) -> list[list[int]]:
        """`gone` in batches of EXPUNGE_BATCH, highest UIDs first: each batch's EXPUNGE lines
        (highest first, RFC 3501 7.4.1) follow the previous batch's, numbered as if sent at
        once. One VANISHED line (QRESYNC) or REMOVEFROM per context (RFC 5267 4.3.4) covers
        them all, so then they are one batch."""
        if self.qresync or self.contexts is not None:
            return [list(gone)]
        ordered = sorted(gone, reverse=True)
        return [ordered[start:start + EXPUNGE_BATCH]
                for start in range(0, len(ordered), EXPUNGE_BATCH)]

    def _flag_event(self, uid: int, flags: frozenset[str], modseq: int,
                    new: dict[int, MessageMeta], changed: dict[int, int],
                    shared: dict[int, MessageMeta]) -> None:
        if uid in new:
            if modseq > new[uid].modseq:
                new[uid] = new[uid].with_flags(flags, modseq)
            return
        seq = self.messages.seq_of(uid)
        meta = self.messages.meta_at(seq) if seq is not None else None
        if seq is not None and meta is not None and modseq > meta.modseq:   # (one search)
            # one message object per change for every view of the mailbox (the event's
            # `shared`; a message's other fields never change): a flag change to 10,000
            # messages seen by 50 sessions made 500,000 copies, 1.1 MB more per session
            made = shared.get(uid)
            if made is None or made.modseq != modseq:
                made = shared[uid] = meta.with_flags(flags, modseq)
            self.messages.replace_at(seq, made)
            changed[uid] = seq   # new messages go after it: it keeps this number
        elif meta is None and uid > self.top:   # not announced yet (module docstring)
            early = self.early_flags.get(uid)
            if early is None or modseq > early[1]:
                self.early_flags[uid] = (flags, modseq)

    def _with_early_flags(self, new: dict[int, MessageMeta]) -> list[MessageMeta]:
        """The new messages with any newer flag change that came before them; changes kept for
        UIDs at or below the newest one announced now are dropped (announced or expunged)."""
        if not self.early_flags:   # the common case, in C-level steps
            return list(new.values())
        metas = []
        for uid, meta in new.items():
            early = self.early_flags.pop(uid, None)
            if early is not None and early[1] > meta.modseq:
                meta = meta.with_flags(*early)
            metas.append(meta)
        top = max(new)
        for uid in [uid for uid in self.early_flags if uid <= top]:
            del self.early_flags[uid]
        return metas
