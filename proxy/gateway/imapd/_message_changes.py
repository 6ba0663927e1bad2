"""Selected-state commands that change messages (RFC 3501 6.4; UIDPLUS RFC 4315; MOVE RFC 6851):
STORE, COPY, MOVE, EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT, CHECK.

After a store change the handler updates its own view, then publishes the change on the hub
for the other sessions (the view is the origin, so it is not notified twice).
"""

from __future__ import annotations

import contextlib

from ...store import FlagMode, MailboxNotFound
from ...store.base import normalize_flags
from . import _condstore as cs
from . import _quota as quota
from ._args import Reply, compress, mailbox, parse_flags, uid_list, word
from ._messages import is_uid, targets, writable
from ._state import Trigger

_STORE_MODES = {b"FLAGS": FlagMode.REPLACE, b"+FLAGS": FlagMode.ADD, b"-FLAGS": FlagMode.REMOVE}
_MERGE = {FlagMode.REPLACE: lambda old, wanted: wanted, FlagMode.ADD: frozenset.union,
          FlagMode.REMOVE: frozenset.difference}   # what a STORE makes of flags the client knows


# ---- STORE -------------------------------------------------------------------------------------

async def store(session, cmd):
    unchanged_since, args = cs.store_modifiers(list(cmd.args))
    if len(args) < 3:
        raise Reply.bad("STORE expects a sequence set, an item and flags")
    uid = is_uid(cmd)
    seqs = targets(session, args[0], uid)
    item = word(args[1])
    silent = item.endswith(b".SILENT")
    mode = _STORE_MODES.get(item[:-7] if silent else item)
    if mode is None:
        raise Reply.bad("STORE expects FLAGS, +FLAGS or -FLAGS")
    flags = parse_flags(args[2] if len(args) == 3 else tuple(args[2:]), allow_recent=True)
    writable(session)
    view = session.view
    if unchanged_since is not None:
        await cs.enable_condstore(session)
    uids = [uid for uid in view.messages.uids_at(seqs) if uid not in view.expunged]
    if not uids:
        return None
    result = await session.store.store_flags(view.mailbox_id, uids, flags, mode, unchanged_since)
    # the other sessions hear of it at once, before this one's view is updated in slices
    session.backend.hub.flags(view.mailbox_id, result.updated, origin=view)
    budget = session.budget
    # What the client was told: a row may also show another session's change this view has not
    # told yet. Applied here, the hub's event for it is no news later: it is told now (below)
    told = {u.uid: meta for u in result.updated if (meta := view.messages.get(u.uid)) is not None}
    for update in result.updated:
        view.set_flags(update.uid, update.flags, update.modseq)
        await budget.share()   # committed: must finish, but not in one step (STORE 1:*)
    for line in view.announce(u.flags for u in result.updated):   # RFC 3501 7.2.6: FLAGS first
        session.emit(line)
    wanted = normalize_flags(flags)
    for update in result.updated:
        await budget.share()
        seq, before = view.seq_of(update.uid), told.get(update.uid)
        if seq is None or before is None:
            continue
        # RFC 3501 6.4.6: even with .SILENT, flags changed by another session are sent
        expected = _MERGE[mode](before.flags, wanted)
        if not silent or update.flags != expected:
            session.emit(view.fetch_flags_line(seq, with_uid=uid))
        elif view.condstore and update.modseq > before.modseq:   # RFC 7162 3.1.3: MODSEQ
            session.emit(b"%d FETCH (UID %d MODSEQ (%d))" % (seq, update.uid, update.modseq))
    _tell_failed(session, view, result.failed)
    if result.modified:   # 3.1.3: MODIFIED lists what failed UNCHANGEDSINCE
        failed = sorted(result.modified) if uid else view.messages.seqs_of(result.modified)
        return b"MODIFIED " + compress(failed), "Conditional STORE failed for some messages."
    return None


def _tell_failed(session, view, failed) -> None:
    """RFC 7162 3.1.3: a message in MODIFIED has a MODSEQ above the client's. The change that
    raised it may not have reached this view yet (another session publishes it just after its
    commit, and a PostgreSQL commit is seen by others before its author hears of it): the
    stored flags and MODSEQ, read with the test, are told now, or a FETCH MODSEQ right after
    [MODIFIED] could still answer the old one. The change's own event is then no news."""
    newer = [f for f in failed
             if (meta := view.messages.get(f.uid)) is not None and f.modseq > meta.modseq]
    for line in view.announce(f.flags for f in newer):   # RFC 3501 7.2.6: FLAGS first
        session.emit(line)
    for update in newer:
        view.set_flags(update.uid, update.flags, update.modseq)
        seq = view.seq_of(update.uid)
        if seq is not None:
            session.emit(view.fetch_flags_line(seq))


# ---- COPY, MOVE ----------------------------------------------------------------------------------

async def _destination(session, arg):
    name = mailbox(arg, session.utf8)
    target = await session.store.get_mailbox(session.account.id, name)
    if target is None:   # RFC 3501 6.4.7: the client may CREATE it and retry
        raise Reply.no(f"Mailbox does not exist: {name}", b"TRYCREATE")
    return target


async def adding_to(session, target, call):
    """`await call()`, the store call that adds messages to `target` (COPY, MOVE, APPEND). A
    target that another session deleted or renamed since `_destination` (or APPEND) found it is
    answered as one that did not exist then: NO [TRYCREATE] (RFC 3501 6.4.7, 6.3.11), not the
    store's NONEXISTENT, which names its id and means the selected mailbox. The source going
    away instead (this session's mailbox deleted: BYE follows, RFC 2180 3.3) keeps its error."""
    try:
        return await call()
    except MailboxNotFound:
        now = await session.store.get_mailbox(session.account.id, target.name)
        if now is not None and now.id == target.id:
            raise
        raise Reply.no(f"Mailbox does not exist: {target.name}", b"TRYCREATE") from None


async def publish_appended(session, mailbox_id: int) -> None:
    """Tell the hub about new messages in `mailbox_id` (one snapshot for all listeners). If
    another session deleted the mailbox since the commit, nobody is left to tell (its sessions
    get BYE, RFC 2180 3.3) and the command that added to it still succeeded: it came first, so
    its OK stands (a MOVE's EXPUNGEs are already sent), as Dovecot's does."""
    try:
        await session.backend.hub.announce_latest(session.backend.index, session.store, mailbox_id)
    except MailboxNotFound:
        pass


async def copy(session, cmd, move: bool = False):
    if len(cmd.args) != 2:
        raise Reply.bad(f"{'MOVE' if move else 'COPY'} expects a sequence set and a mailbox")
    seqs = targets(session, cmd.args[0], is_uid(cmd))
    target = await _destination(session, cmd.args[1])
    if move:
        writable(session)
    view = session.view
    metas = [meta for meta in view.messages.metas_at(seqs) if meta.uid not in view.expunged]
    uids = [meta.uid for meta in metas]
    if not uids:
        return None
    if not move:   # RFC 9208 4.3; a MOVE within the account changes no usage
        await quota.check(session, sum(meta.size for meta in metas), len(uids))
    operation = session.store.move if move else session.store.copy
    hub = session.backend.hub   # (a COPY removes nothing: it does not wait for collects)
    removing = hub.removing([meta.body_id for meta in metas]) if move \
        else contextlib.nullcontext()
    async with removing:
        pairs = await adding_to(session, target,
                                lambda: operation(view.mailbox_id, uids, target.id))
        moved = [a for a, _ in pairs]
        if move:   # published before `removing` ends (its docstring)
            hub.expunged(view.mailbox_id, moved, origin=view)
    code = (b"COPYUID %d %s %s" % (target.uidvalidity, uid_list([a for a, _ in pairs]),
                                   uid_list([b for _, b in pairs]))) if pairs else None
    if move:   # the hub was told at once, before any await: other views keep what they show
        # (RFC 2180 4.1.1); this one forgets what moved (in slices) before the announcement
        # below, so even if that fails
        if code:   # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs
            session.emit(b"OK [" + code + b"] Moved UIDs.")
        for batch in view.expunge_batches(moved):
            for line in view.expunge_lines(batch):   # or VANISHED (RFC 7162 3.2.10)
                session.emit(line)
            await session.budget.share()   # committed: must finish, but not in one step
    if pairs:
        await publish_appended(session, target.id)
    return (code, "COPY completed.") if not move else None


async def move(session, cmd):
    return await copy(session, cmd, move=True)


# ---- EXPUNGE, CLOSE, UNSELECT, CHECK ---------------------------------------------------------

async def _expunge_deleted(session, only: set[int] | None, announce: bool) -> None:
    view = session.view
    if announce:
        await session.send_updates(True)   # learn others' flag changes first (allowed here)
    marked = [meta for meta in view.messages.metas() if "\\Deleted" in meta.flags
              and (only is None or meta.uid in only)]
    deleted = [meta.uid for meta in marked]
    hub = session.backend.hub
    async with hub.removing(meta.body_id for meta in marked):   # (its docstring)
        # only_deleted: another session may have taken \Deleted off since this view was told
        gone = await session.store.expunge(view.mailbox_id, deleted, only_deleted=True) \
            if deleted else []
        bodies = [meta.body_id for meta in view.messages.shown_metas(set(gone))]
        # the other sessions hear of it at once; this one's view forgets them in slices
        hub.expunged(view.mailbox_id, gone, origin=view, body_ids=bodies)
    for batch in view.expunge_batches(gone):
        # EXPUNGE, or VANISHED with QRESYNC (RFC 7162 3.2.10)
        for line in view.expunge_lines(batch):
            if announce:
                session.emit(line)
        await session.budget.share()   # committed: must finish, but not in one step


async def expunge(session, cmd):
    if cmd.args and not is_uid(cmd):
        raise Reply.bad("EXPUNGE takes no arguments")
    writable(session)
    only = None
    if is_uid(cmd):   # RFC 4315 2.1
        if len(cmd.args) != 1:
            raise Reply.bad("UID EXPUNGE expects a UID set")
        only = set(session.view.messages.uids_at(targets(session, cmd.args[0], True)))
    await _expunge_deleted(session, only, announce=True)
    return None


async def close(session, cmd):
    if cmd.args:
        raise Reply.bad("CLOSE takes no arguments")
    if not session.view.read_only:   # RFC 3501 6.4.2: silent expunge, none after EXAMINE
        await _expunge_deleted(session, None, announce=False)
    session.deselect()
    session.transition(Trigger.CLOSE)
    return None


async def unselect(session, cmd):
    if cmd.args:
        raise Reply.bad("UNSELECT takes no arguments")
    session.deselect()   # RFC 3691: like CLOSE, without the expunge
    session.transition(Trigger.CLOSE)
    return None


async def check(session, cmd):
    return None   # RFC 3501 6.4.1: every change is already committed
