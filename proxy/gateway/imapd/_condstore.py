"""CONDSTORE and QRESYNC (RFC 7162): modifier parsing and the QRESYNC resynchronisation.

Theory of operation: the store gives every message a MODSEQ and every mailbox a HIGHESTMODSEQ
(never NOMODSEQ, 3.1.2.2), and keeps a change log (`changes_since`). A session turns CONDSTORE
on with ENABLE (RFC 5161) or with its first CONDSTORE-enabling command (3.1: SELECT (CONDSTORE),
FETCH MODSEQ/CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ, STATUS HIGHESTMODSEQ); from then
on every untagged FETCH that carries FLAGS also carries MODSEQ (3.1.4). ENABLE QRESYNC implies
CONDSTORE (3.2.3) and makes the server send VANISHED instead of EXPUNGE (3.2.10).
"""

from __future__ import annotations

from ...store import ChangeKind, ChangesPruned
from ..numbers import MODSEQ_MAX
from ._args import Reply, compress, parse_number, parse_sequence_set, resolve, word
from ._message_map import MessageMap

CONDSTORE, QRESYNC = b"CONDSTORE", b"QRESYNC"


async def enable_condstore(session) -> None:
    """A CONDSTORE-enabling command (3.1); the first one in selected state announces
    HIGHESTMODSEQ (3.1.2.1)."""
    if CONDSTORE in session.enabled:
        return
    session.enabled.add(CONDSTORE)
    view = session.view
    if view is not None:
        view.condstore = True
        session.emit(b"OK [HIGHESTMODSEQ %d] Highest." % await session.store.highest_modseq(
            view.mailbox_id))


def _number(value, what: str) -> int:
    return parse_number(value, what, MODSEQ_MAX)   # RFC 7162 3.1.1: mod-sequence-value


def select_params(session, args) -> tuple[bool, tuple | None]:
    """SELECT/EXAMINE parameters (3.1.8, 3.2.5): (CONDSTORE asked, QRESYNC data or None)."""
    condstore, qresync = False, None
    if not args:
        return condstore, qresync
    if len(args) != 1 or not isinstance(args[0], tuple):
        raise Reply.bad("SELECT expects a mailbox and optional parameters")
    items = list(args[0])
    while items:
        name = word(items.pop(0))
        if name == CONDSTORE:
            condstore = True
        elif name == QRESYNC and items and isinstance(items[0], tuple):
            if QRESYNC not in session.enabled:   # 3.2.5: QRESYNC must be enabled first
                raise Reply.bad("QRESYNC is not enabled")
            data = list(items.pop(0))
            if len(data) < 2:
                raise Reply.bad("QRESYNC expects a UIDVALIDITY and a MODSEQ")
            uidvalidity = _number(data[0], "QRESYNC")
            modseq = _number(data[1], "QRESYNC")
            known = None
            if len(data) > 2 and not isinstance(data[2], tuple):
                known = parse_sequence_set(data[2])   # seq-match-data is optional: ignored
            qresync = (uidvalidity, modseq, known)
        else:
            raise Reply.bad("Unknown SELECT parameter")
    return condstore, qresync


async def qresync_lines(session, view, qresync) -> None:
    """3.2.5.1: VANISHED (EARLIER) for what was expunged since the client's MODSEQ, then FETCH
    for every message changed since (both limited to the client's known UIDs when given)."""
    uidvalidity, modseq, known = qresync
    if uidvalidity != view.uidvalidity:
        return   # the client's cache is void: a plain SELECT tells it everything
    ranges = resolve(known, view.max_uid or 1) if known is not None else None

    def wanted(uid: int) -> bool:
        return ranges is None or any(lo <= uid <= hi for lo, hi in ranges)

    vanished = await _expunged_since(session, view, modseq, ranges)
    if vanished:
        session.emit(b"VANISHED (EARLIER) " + vanished)
    for seq, uid, meta in view.messages.items():
        if meta.modseq > modseq and wanted(uid):
            session.emit(view.fetch_flags_line(seq, with_uid=True))


def fetch_modifiers(session, cmd, uid: bool) -> tuple[int | None, bool]:
    """FETCH modifiers (3.1.4 CHANGEDSINCE, 3.2.6 VANISHED): (changedsince, vanished)."""
    if len(cmd.args) == 2:
        return None, False
    if len(cmd.args) != 3 or not isinstance(cmd.args[2], tuple):
        raise Reply.bad("FETCH expects a sequence set, items and optional modifiers")
    items = list(cmd.args[2])
    changedsince, vanished = None, False
    while items:
        name = word(items.pop(0))
        if name == b"CHANGEDSINCE" and items:
            changedsince = _number(items.pop(0), "CHANGEDSINCE")
        elif name == b"VANISHED":
            vanished = True
        else:
            raise Reply.bad("Unknown FETCH modifier")
    if vanished and (not uid or changedsince is None or QRESYNC not in session.enabled):
        raise Reply.bad("VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC")   # 3.2.6
    return changedsince, vanished


async def vanished_earlier(session, view, set_arg, changedsince: int) -> None:
    """3.2.6: UIDs in the UID set expunged since `changedsince`."""
    ranges = resolve(parse_sequence_set(set_arg), view.max_uid)
    gone = await _expunged_since(session, view, changedsince, ranges)
    if gone:
        session.emit(b"VANISHED (EARLIER) " + gone)


async def _expunged_since(session, view, modseq: int, ranges) -> bytes:
    """The UID set expunged since `modseq` within `ranges` (None: all), from the change log; when
    the log was pruned past `modseq`, every UID in `ranges` (or 1..highest) that does not exist
    (RFC 7162 3.2.5.1 lets a server include UIDs the client never had)."""
    try:
        changes = await session.store.changes_since(view.mailbox_id, modseq)
    except ChangesPruned:
        spans = ranges if ranges is not None else [(1, max(view.max_uid, 1))]
        return _missing(view.messages, spans)
    gone = sorted({c.uid for c in changes if c.kind is ChangeKind.EXPUNGE and c.uid not in view.messages
                   and (ranges is None or any(lo <= c.uid <= hi for lo, hi in ranges))})
    return compress(gone) if gone else b""


def _missing(messages: MessageMap, spans) -> bytes:
    """The UIDs inside `spans` that no message of the view has, as a UID set ("" when none)."""
    return b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi)
                     for lo, hi in messages.missing(spans))


def store_modifiers(args: list) -> tuple[int | None, list]:
    """STORE set (UNCHANGEDSINCE n) item flags (3.1.3): (unchanged_since, remaining args)."""
    if len(args) >= 2 and isinstance(args[1], tuple):
        items = list(args[1])
        if len(items) != 2 or word(items[0]) != b"UNCHANGEDSINCE":
            raise Reply.bad("Unknown STORE modifier")
        return _number(items[1], "UNCHANGEDSINCE"), [args[0]] + list(args[2:])
    return None, list(args)
