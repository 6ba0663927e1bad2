"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 4): what SEARCH/SORT RETURN (UPDATE) remembers,
and the ESEARCH ADDTO/REMOVEFROM lines that keep the client's copy of the result current.

Theory of operation
-------------------
A searching command with the UPDATE return option leaves a `Context` on the selected view
(`SelectedView.contexts`, at most `gateway.limits.search_updates` of them; past that the command
still answers and says `* NO [NOUPDATE "tag"]`, 4.3.1). A context keeps its criteria with
sequence numbers already turned into UIDs (4.3: they are evaluated when the command is received)
and its result as UIDs: for SEARCH a set (answered in mailbox order, context position 0 as
4.3.3/4.3.4 allow, as Dovecot does), for SORT the sorted list of sort items, so a message that
enters is placed by binary search and its position given (4.3.3).

The view tells its `Contexts` what changed: messages that arrived, messages whose flags changed
(by this session or another) and, synchronously in `expunge_lines`, messages expunged. Expunged
members are answered at once by `removing` (4.3.4: a REMOVEFROM in sequence numbers MUST come
before the EXPUNGE). Arrivals and flag changes are only noted here; `_context_refresh.refresh`
evaluates the criteria against just those messages after the view has sent EXISTS and FETCH
(4.3.3: ADDTO after the EXISTS) and hands the differences back to `added_removed`.

Flag changes cannot move a message in or out of a context whose criteria read neither flags nor
MODSEQ, so such a context only looks at arrivals (`watches_flags`). Keys that depend on the clock
(WITHIN's OLDER/YOUNGER) are evaluated at each change, never on a timer. Updates end with the view
(CLOSE, UNSELECT, SELECT, EXAMINE, LOGOUT) or CANCELUPDATE (4.3.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..search import SearchKey, key_ops
from ..sort import SORT_KEYS, Item
from ._args import Reply, compress

if TYPE_CHECKING:
    from ._view import SelectedView

DEFAULT_SEARCH_UPDATES = 10   # gateway.limits.search_updates (Dovecot: CLIENT_MAX_SEARCH_UPDATES)
_FLAG_OPS = {"FLAG", "MODSEQ"}   # NEW, OLD, RECENT, KEYWORD... all parse to FLAG


@dataclass(eq=False)
class Context:
    """One live result (RFC 5267 4.3)."""

    tag: bytes
    key: SearchKey                              # sequence numbers pinned to UIDs
    uid: bool                                   # UID SEARCH/SORT: answers are UIDs
    members: set[int]                           # UIDs in the result
    program: list[tuple[str, bool]] | None = None   # SORT's program; None for SEARCH
    order: list[Item] = field(default_factory=list)  # SORT: the result, Item.seq = UID
    need_size: bool = False                     # SORT by SIZE: items carry the virtual size

    @property
    def watches_flags(self) -> bool:
        return bool(key_ops(self.key) & _FLAG_OPS)


class Contexts:
    """The live contexts of one view and what changed since they were last refreshed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live: dict[bytes, Context] = {}
        self.arrived: set[int] = set()   # UIDs new to the view since the last refresh
        self.flagged: set[int] = set()   # UIDs whose flags changed since then

    def check_tag(self, tag: bytes) -> None:
        """4.3: UPDATE under a tag that already names a live context is BAD."""
        if tag in self.live:
            raise Reply.bad("Tag reuse: a search with this tag is already updating")

    def open(self, context: Context) -> bytes | None:
        """Remember `context`; past the limit the untagged NO to send instead (4.3.1)."""
        if len(self.live) >= self.limit:
            return b'NO [NOUPDATE "%s"] Too many contexts' % context.tag
        self.live[context.tag] = context
        return None

    def cancel(self, tag: bytes) -> bool:
        return self.live.pop(tag, None) is not None

    def drop(self, context: Context) -> bytes:
        """Stop a context whose refresh ran out of its budget (NOUPDATE, 4.3.1)."""
        self.live.pop(context.tag, None)
        return b'NO [NOUPDATE "%s"] Too much work: updates stopped' % context.tag

    def take_changes(self) -> tuple[set[int], set[int]]:
        arrived, flagged = self.arrived, self.flagged
        self.arrived, self.flagged = set(), set()
        return arrived, flagged

    # ---- lines -----------------------------------------------------------------------------
    def removing(self, view: "SelectedView", uids) -> list[bytes]:
        """REMOVEFROM for members about to be expunged, numbered as the client knows them now
        (4.3.4: before the EXPUNGE)."""
        gone = set(uids)
        self.arrived -= gone
        self.flagged -= gone
        lines = []
        for context in self.live.values():
            line = removed_line(context, view, gone & context.members)
            if line is not None:
                lines.append(line)
        return lines


# ---- commands ---------------------------------------------------------------------------------

def contexts_of(session) -> Contexts:
    """The selected view's contexts (made at the first UPDATE)."""
    view = session.view
    if view.contexts is None:
        view.contexts = Contexts(session.search_updates)
    return view.contexts


def open_search(session, cmd, key: SearchKey, seqs: list[int]) -> bytes | None:
    """SEARCH/UID SEARCH RETURN (UPDATE): remember the result (sequence numbers `seqs`); the
    untagged NO to send when past the limit."""
    view = session.view
    uid = cmd.name.startswith(b"UID ")
    members = set(view.messages.uids_at(seqs))
    return contexts_of(session).open(Context(cmd.tag, pin(key, view), uid, members))


def open_sort(session, cmd, key: SearchKey, program: list[tuple[str, bool]], items: list[Item],
              need_size: bool) -> bytes | None:
    """SORT/UID SORT RETURN (UPDATE): `items` is the result in sort order (Item.number = UID)."""
    order = [item._replace(seq=item.number) for item in items]
    uid = cmd.name.startswith(b"UID ")
    context = Context(cmd.tag, pin(key, session.view), uid, {i.seq for i in order}, program,
                      order, need_size)
    return contexts_of(session).open(context)


async def cancelupdate(session, cmd):
    """RFC 5267 4.3.5: `CANCELUPDATE 1*(SP quoted)`. A tag without a live context answers NO
    (the RFC does not say; Dovecot's answer), after the ones before it were cancelled."""
    tags = list(cmd.args)
    if not tags or any(type(tag) is not bytes for tag in tags):   # quoted strings only
        raise Reply.bad("CANCELUPDATE expects the quoted tags of searches")
    contexts = session.view.contexts
    for tag in tags:
        if contexts is None or not contexts.cancel(bytes(tag)):
            raise Reply.no("Unknown tag.")
    return None


# ---- contexts -----------------------------------------------------------------------------------

def pin(key: SearchKey, view: "SelectedView") -> SearchKey:
    """`key` with every sequence-number set replaced by the UIDs it names now (RFC 5267 4.3:
    sequence numbers are evaluated when the command is received)."""
    if key.op == "SEQSET":
        ranges = []
        for low, high in key.args[0]:
            low = view.exists if low is None else low
            high = view.exists if high is None else high
            low, high = max(min(low, high), 1), min(max(low, high), view.exists)
            if low <= high:   # seq low..high are exactly the view's UIDs between theirs
                ranges.append((view.messages.uid_at(low), view.messages.uid_at(high)))
        return SearchKey("UID", (tuple(ranges),)) if ranges else SearchKey("NOT", (SearchKey("ALL"),))
    if not any(isinstance(arg, SearchKey) for arg in key.args):
        return key
    return SearchKey(key.op, tuple(pin(a, view) if isinstance(a, SearchKey) else a
                                   for a in key.args))


def _head(context: Context) -> bytes:
    return b'ESEARCH (TAG "%s")' % context.tag + (b" UID" if context.uid else b"")


def _number(context: Context, view: "SelectedView", uid: int) -> int:
    return uid if context.uid else (view.seq_of(uid) or 0)


def removed_line(context: Context, view: "SelectedView", uids: set[int]) -> bytes | None:
    """Take `uids` (members) out of the context: `REMOVEFROM (...)`, or None."""
    if not uids:
        return None
    context.members -= uids
    if context.program is None:   # SEARCH: position 0, mailbox order (4.3.4)
        numbers = sorted(_number(context, view, u) for u in uids)
        return _head(context) + b" REMOVEFROM (0 %s)" % compress(numbers)
    before = context.order
    positions = [n for n, item in enumerate(before, 1) if item.seq in uids]
    context.order = [item for item in before if item.seq not in uids]
    pairs = []   # from the end, so each position is valid when the client applies it
    for start, run in reversed(_runs(positions, before)):
        numbers = [_number(context, view, item.seq) for item in run]
        pairs.append(b"%d %s" % (start, compress(numbers)))
    return _head(context) + b" REMOVEFROM (" + b" ".join(pairs) + b")"


def added_line(context: Context, view: "SelectedView", uids: list[int], items: list[Item],
               merged: list[Item] | None = None) -> bytes | None:
    """Put `uids` (SEARCH) or `items` (SORT, Item.seq = UID) into the context: `ADDTO (...)`.
    `merged`: the SORT result with the items already in it (many items: one sort, made off the
    event loop by the caller, instead of a binary insertion each)."""
    if context.program is None:
        if not uids:
            return None
        context.members.update(uids)
        numbers = sorted(_number(context, view, u) for u in uids)
        return _head(context) + b" ADDTO (0 %s)" % compress(numbers)
    if not items:
        return None
    if merged is not None:
        context.order = merged
    else:
        for item in items:
            context.order.insert(_position(context.order, item, context.program), item)
    context.members.update(item.seq for item in items)
    added = {item.seq for item in items}
    positions = [n for n, item in enumerate(context.order, 1) if item.seq in added]
    pairs = []   # ascending final positions: each insertion lands where the client expects
    for start, run in _runs(positions, context.order):
        pairs.append(b"%d %s" % (start, compress([_number(context, view, i.seq) for i in run])))
    return _head(context) + b" ADDTO (" + b" ".join(pairs) + b")"


def _runs(positions: list[int], order: list[Item]) -> list[tuple[int, list[Item]]]:
    """Ascending 1-based positions in `order`, consecutive ones grouped: (first position, the
    items at those positions)."""
    runs: list[tuple[int, list[Item]]] = []
    for p in positions:
        if runs and runs[-1][0] + len(runs[-1][1]) == p:
            runs[-1][1].append(order[p - 1])
        else:
            runs.append((p, [order[p - 1]]))
    return runs


def _position(order: list[Item], item: Item, program: list[tuple[str, bool]]) -> int:
    """Where `item` goes in `order` (RFC 5256 3: ties in mailbox order, i.e. by UID)."""
    low, high = 0, len(order)
    while low < high:
        mid = (low + high) // 2
        if _before(order[mid], item, program):
            low = mid + 1
        else:
            high = mid
    return low


def _before(a: Item, b: Item, program: list[tuple[str, bool]]) -> bool:
    for key, reverse in program:
        x, y = SORT_KEYS[key](a), SORT_KEYS[key](b)
        if x != y:
            return x > y if reverse else x < y
    return a.seq < b.seq

