"""Selected-state commands (RFC 3501 6.4; UIDPLUS RFC 4315; MOVE RFC 6851; ESEARCH RFC 4731).

Every handler acts on the session's `SelectedView` (sequence numbers as the client knows them)
and on the store by UID. After a store change the handler updates its own view, then publishes
the change on the hub for the other sessions (the view is the origin, so it is not notified
twice). Expunges by others are never announced inside FETCH, STORE or SEARCH (the command table
says so, `expunge_ok=False`); this module never emits another session's changes itself.
"""

from __future__ import annotations

import types

import trio

from ...store import FlagMode, StoreError
from ..search import SearchError, SearchKey, matches, parse_search
from ._args import (Reply, compress, flag_list, mailbox, parse_flags, parse_sequence_set,
                    resolve, uid_list, word)
from ._fetch import Item, parse_items, render
from ._state import Trigger

_RAW_KEYS = {"HEADER", "BODY", "TEXT", "SENTBEFORE", "SENTON", "SENTSINCE"}
_STORE_MODES = {b"FLAGS": FlagMode.REPLACE, b"+FLAGS": FlagMode.ADD, b"-FLAGS": FlagMode.REMOVE}
_ESEARCH_OPTIONS = {b"MIN", b"MAX", b"ALL", b"COUNT"}


def is_uid(cmd) -> bool:
    return cmd.name.startswith(b"UID ")


def targets(session, arg, uid: bool) -> list[int]:
    """Sequence numbers named by a sequence set (uid=False) or a UID set (RFC 3501 6.4.8)."""
    view = session.view
    ranges = parse_sequence_set(arg)
    if uid:
        return view.seqs_for_uids(resolve(ranges, view.max_uid))
    resolved = resolve(ranges, view.exists)
    if any(lo < 1 or hi > view.exists for lo, hi in resolved):   # Dovecot: BAD, as here
        raise Reply.bad("Invalid messageset: no such message")
    return view.seqs_for(resolved)


def _writable(session) -> None:
    if session.view.read_only:
        raise Reply.no("Mailbox is read-only.", b"READ-ONLY")


# ---- FETCH -------------------------------------------------------------------------------------

async def fetch(session, cmd):
    if len(cmd.args) != 2:
        raise Reply.bad("FETCH expects a sequence set and items")   # no CONDSTORE modifiers
    uid = is_uid(cmd)
    seqs = targets(session, cmd.args[0], uid)
    items = parse_items(cmd.args[1], uid=uid)
    view = session.view
    seen_now: set[int] = set()
    if not view.read_only and any(not i.peek for i in items):   # 6.4.5: BODY[] sets \Seen
        unseen = [view.uids[q - 1] for q in seqs if "\\Seen" not in view.meta[view.uids[q - 1]].flags
                  and view.uids[q - 1] not in view.expunged]
        if unseen:
            result = await session.store.store_flags(view.mailbox_id, unseen, ["\\Seen"], FlagMode.ADD)
            for update in result.updated:
                view.set_flags(update.uid, update.flags, update.modseq)
                seen_now.add(update.uid)
            session.backend.hub.flags(view.mailbox_id, result.updated, origin=view)
    with_flags = items if any(i.name == b"FLAGS" for i in items) else items + [Item(b"FLAGS")]
    missing = False
    for seq in seqs:
        message_uid = view.uids[seq - 1]
        meta = view.meta[message_uid]
        try:
            line = await render(session, seq, meta, with_flags if message_uid in seen_now else items,
                                view.flags_of(message_uid))
        except StoreError:   # expunged by another session, not yet announced (RFC 2180 4.1.3)
            missing = True
            continue
        session.emit(line)
        await session.maybe_flush()
    if missing:
        raise Reply.no("Some messages were expunged by another session.", b"EXPUNGEISSUED")


# ---- STORE -------------------------------------------------------------------------------------

async def store(session, cmd):
    if len(cmd.args) < 3:
        raise Reply.bad("STORE expects a sequence set, an item and flags")
    uid = is_uid(cmd)
    seqs = targets(session, cmd.args[0], uid)
    item = word(cmd.args[1])
    silent = item.endswith(b".SILENT")
    mode = _STORE_MODES.get(item[:-7] if silent else item)
    if mode is None:
        raise Reply.bad("STORE expects FLAGS, +FLAGS or -FLAGS")
    flags = parse_flags(cmd.args[2] if len(cmd.args) == 3 else tuple(cmd.args[2:]), allow_recent=True)
    _writable(session)
    view = session.view
    uids = [view.uids[q - 1] for q in seqs if view.uids[q - 1] not in view.expunged]
    if not uids:
        return None
    result = await session.store.store_flags(view.mailbox_id, uids, flags, mode)
    for update in result.updated:
        view.set_flags(update.uid, update.flags, update.modseq)
    session.backend.hub.flags(view.mailbox_id, result.updated, origin=view)
    if silent:
        return None
    for update in result.updated:
        seq = view.seq_of(update.uid)
        if seq is not None:
            prefix = b"UID %d " % update.uid if uid else b""
            session.emit(b"%d FETCH (%sFLAGS %s)" % (seq, prefix, flag_list(view.flags_of(update.uid))))
    return None


# ---- SEARCH ------------------------------------------------------------------------------------

def _ops(key: SearchKey) -> set[str]:
    found = {key.op}
    for arg in key.args:
        if isinstance(arg, SearchKey):
            found |= _ops(arg)
    return found


def _search_args(cmd) -> tuple[set[bytes] | None, list]:
    """(ESEARCH return options or None, the search keys)."""
    args = list(cmd.args)
    if args and isinstance(args[0], bytes) and bytes(args[0]).upper() == b"RETURN":
        if len(args) < 2 or not isinstance(args[1], tuple):
            raise Reply.bad("RETURN expects a list of options")
        options = {word(option) for option in args[1]} or {b"ALL"}   # RFC 4731 3.1
        if not options <= _ESEARCH_OPTIONS:
            raise Reply.bad("Unknown RETURN option")
        return options, args[2:]
    return None, args


async def search(session, cmd):
    options, args = _search_args(cmd)
    try:
        key = parse_search(args)
    except SearchError as exc:
        code = exc.code.encode() if exc.code else None
        raise (Reply.no(exc.text, code) if code else Reply.bad(exc.text)) from None
    ops = _ops(key)
    view = session.view
    backend = session.backend
    found = []
    for index, message_uid in enumerate(list(view.uids)):
        meta = view.meta[message_uid]
        raw = None
        size = meta.size
        try:
            if ops & _RAW_KEYS:
                raw = await backend.mime.bodies.get(session.store, meta)
            if ops & {"LARGER", "SMALLER"}:
                size = (await backend.mime.info(session.store, meta)).size
        except StoreError:
            continue   # expunged by another session: its text is gone
        msg = types.SimpleNamespace(seq=index + 1, uid=message_uid, flags=view.flags_of(message_uid),
                                    internaldate=meta.internaldate, size=size, raw=raw)
        if matches(key, msg, last_seq=view.exists, last_uid=view.max_uid):
            found.append(message_uid if is_uid(cmd) else index + 1)
        if index % 64 == 63:
            await trio.lowlevel.checkpoint()
    if options is None:
        session.emit(b"SEARCH" + b"".join(b" %d" % n for n in found))
        return None
    reply = b'ESEARCH (TAG "%s")' % cmd.tag + (b" UID" if is_uid(cmd) else b"")
    if found and b"MIN" in options:
        reply += b" MIN %d" % min(found)
    if found and b"MAX" in options:
        reply += b" MAX %d" % max(found)
    if b"COUNT" in options:
        reply += b" COUNT %d" % len(found)
    if found and b"ALL" in options:
        reply += b" ALL " + compress(sorted(found))
    session.emit(reply)
    return None


# ---- COPY, MOVE ----------------------------------------------------------------------------------

async def _destination(session, arg):
    name = mailbox(arg)
    target = await session.store.get_mailbox(session.account.id, name)
    if target is None:   # RFC 3501 6.4.7: the client may CREATE it and retry
        raise Reply.no(f"Mailbox does not exist: {name}", b"TRYCREATE")
    return target


async def publish_appended(session, mailbox_id: int) -> None:
    """Tell the hub about new messages in `mailbox_id` (one snapshot for all listeners)."""
    hub = session.backend.hub
    snapshot = await session.store.messages(mailbox_id)
    hub.appended(mailbox_id, snapshot)


async def copy(session, cmd, move: bool = False):
    if len(cmd.args) != 2:
        raise Reply.bad(f"{'MOVE' if move else 'COPY'} expects a sequence set and a mailbox")
    seqs = targets(session, cmd.args[0], is_uid(cmd))
    target = await _destination(session, cmd.args[1])
    if move:
        _writable(session)
    view = session.view
    uids = [view.uids[q - 1] for q in seqs if view.uids[q - 1] not in view.expunged]
    if not uids:
        return None
    operation = session.store.move if move else session.store.copy
    pairs = await operation(view.mailbox_id, uids, target.id)
    if pairs:
        await publish_appended(session, target.id)
    code = (b"COPYUID %d %s %s" % (target.uidvalidity, uid_list([a for a, _ in pairs]),
                                   uid_list([b for _, b in pairs]))) if pairs else None
    if not move:
        return code, "COPY completed."
    if code:   # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs
        session.emit(b"OK [" + code + b"] Moved UIDs.")
    moved = [a for a, _ in pairs]
    for message_uid in sorted(moved, reverse=True):
        seq = view.remove(message_uid)
        if seq is not None:
            session.emit(b"%d EXPUNGE" % seq)
    session.backend.hub.expunged(view.mailbox_id, moved, origin=view)
    return None


async def move(session, cmd):
    return await copy(session, cmd, move=True)


# ---- EXPUNGE, CLOSE, UNSELECT, CHECK ---------------------------------------------------------

async def _expunge_deleted(session, only: set[int] | None, announce: bool) -> None:
    view = session.view
    if announce:
        await session.send_updates(True)   # learn others' flag changes first (allowed here)
    deleted = [u for u in view.uids if "\\Deleted" in view.meta[u].flags
               and (only is None or u in only)]
    gone = await session.store.expunge(view.mailbox_id, deleted) if deleted else []
    for message_uid in sorted(gone, reverse=True):
        seq = view.remove(message_uid)
        if announce and seq is not None:
            session.emit(b"%d EXPUNGE" % seq)
    session.backend.hub.expunged(view.mailbox_id, gone, origin=view)


async def expunge(session, cmd):
    if cmd.args and not is_uid(cmd):
        raise Reply.bad("EXPUNGE takes no arguments")
    _writable(session)
    only = None
    if is_uid(cmd):   # RFC 4315 2.1
        if len(cmd.args) != 1:
            raise Reply.bad("UID EXPUNGE expects a UID set")
        only = {session.view.uids[q - 1] for q in targets(session, cmd.args[0], True)}
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
