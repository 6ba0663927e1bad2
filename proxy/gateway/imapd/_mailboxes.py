"""Authenticated-state commands (RFC 3501 6.3): SELECT, EXAMINE, CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS; plus NAMESPACE (RFC 2342). APPEND is in `_append.py`.

Names are Unicode in the store and modified UTF-7 on the wire (5.1.3), or UTF-8 once enabled
(RFC 6855, `_names`); the hierarchy separator
is "/". Superior names that do not exist as mailboxes (after "CREATE a/b" of old, or a DELETE of
a parent) are listed with \\Noselect so clients can walk the tree (6.3.8). LIST attributes
carry RFC 3348 CHILDREN and RFC 6154 SPECIAL-USE.
"""

from __future__ import annotations

import bisect

from ...store import ChangeKind
from ...store.base import INBOX, SYSTEM_FLAGS
from . import _condstore as cs
from . import _names
from . import _quota as quota
from ._args import Reply, astring, flag_list, mailbox, mailbox_wire, word
from ._listing import Children, MailboxPattern, implied_parents
from ._names import IMAP4REV2
from ._state import Trigger
from ._view import SelectedView

SEP = "/"
_STATUS_ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN",
                 b"HIGHESTMODSEQ",   # RFC 7162 3.1.6
                 b"SIZE",            # RFC 8438
                 b"DELETED", b"DELETED-STORAGE",   # RFC 9208 4.2 (QUOTA=RES-*)
                 b"MAILBOXID")       # RFC 8474 4.3


# ---- SELECT / EXAMINE ------------------------------------------------------------------------

async def select(session, cmd, read_only: bool = False):
    if not cmd.args:
        raise Reply.bad("SELECT expects a mailbox name")
    condstore, qresync = cs.select_params(session, cmd.args[1:])   # RFC 7162 3.1.8, 3.2.5
    name = mailbox(cmd.args[0], session.utf8)
    rev2 = IMAP4REV2 in session.enabled
    if session.view is not None and (rev2 or cs.QRESYNC in session.enabled):
        session.emit(b"OK [CLOSED] Previous mailbox closed.")   # RFC 7162 3.2.11, RFC 9051 7.1
    session.deselect()   # RFC 3501 6.3.1: even if this SELECT fails, nothing stays selected
    try:
        return await _open(session, name, read_only, condstore, qresync, rev2)
    except Exception:
        # a failure after the view subscribed (a store call, say) must not leave it selected:
        # its state would say SELECTED, and the hub would defer every expunged body of the
        # mailbox for a view that never loads (hub.py, RFC 2180 4.1.1)
        session.deselect()
        session.transition(Trigger.SELECT_FAILED)
        raise


async def _open(session, name: str, read_only: bool, condstore: bool, qresync: tuple | None,
                rev2: bool):
    """SELECT's work once nothing is selected: subscribe, read, load, answer."""
    index, hub = session.backend.index, session.backend.hub
    # Subscribe before reading the mailbox: then no change can fall between the read and the
    # subscription, and the HIGHESTMODSEQ read is as new as the subscription (see _index)
    guess = index.known(name)
    if guess is not None:
        session.select(SelectedView(guess, [], read_only, set(), hub))
    box = await session.store.get_mailbox(session.account.id, name)
    index.remember(name, box)
    if box is None:
        raise Reply.no(f"Mailbox does not exist: {name}", b"NONEXISTENT")
    if guess is not None and (guess.id, guess.uidvalidity) == (box.id, box.uidvalidity):
        view = session.view
        assert view is not None
        snap = await index.snapshot(session.store, box)   # no reload (see _index)
    else:   # first SELECT of this name, or another mailbox now has it: one more store call
        view = SelectedView(box, [], read_only, set(), hub)
        session.select(view)
        snap = await index.latest(session.store, box.id)
    if condstore:
        session.enabled.add(cs.CONDSTORE)
    view.condstore = cs.CONDSTORE in session.enabled
    view.qresync = cs.QRESYNC in session.enabled
    view.rev2 = rev2
    view.load(snap)
    top = view.max_uid
    if rev2:   # RFC 9051 E.5: no \Recent; mail stays recent for IMAP4rev1 sessions
        floor = top + 1
    elif read_only:   # EXAMINE looks without claiming (RFC 3501 6.3.2)
        floor = await session.store.recent_floor(box.id)
    else:
        floor = await session.backend.hub.claim_recent(session.store, box.id, top) if top else 1
    view.recent = set(snap.uids[bisect.bisect_left(snap.uids, floor):]) if top else set()
    session.transition(Trigger.SELECT)
    view.keywords = set(snap.keywords)
    flags = list(SYSTEM_FLAGS) + snap.keywords
    session.emit(b"FLAGS " + flag_list(flags))
    permanent = b"()" if read_only else flag_list(flags + ["\\*"])
    session.emit(b"OK [PERMANENTFLAGS " + permanent + b"] Flags permitted.")
    session.emit(b"%d EXISTS" % view.exists)
    if rev2:   # RFC 9051 6.3.2: a LIST response for the mailbox; no RECENT, no UNSEEN code
        session.emit(await _list_line(session, box))
    else:
        session.emit(b"%d RECENT" % len(view.recent))
        first_unseen = snap.first_unseen
        if first_unseen is not None:
            session.emit(b"OK [UNSEEN %d] First unseen." % first_unseen)
    session.emit(b"OK [UIDVALIDITY %d] UIDs valid." % box.uidvalidity)
    box_id = session.backend.object_ids.mailbox(box.id)
    session.emit(b"OK [MAILBOXID (" + box_id + b")] Ok")   # RFC 8474 4.1
    session.emit(b"OK [UIDNEXT %d] Predicted next UID." % max(box.uidnext, view.max_uid + 1))
    # RFC 7162 3.1.2.1: always (the store has MODSEQs, never NOMODSEQ)
    session.emit(b"OK [HIGHESTMODSEQ %d] Highest." % max(box.highest_modseq, snap.modseq))
    if qresync is not None:
        await cs.qresync_lines(session, view, qresync)
    return (b"READ-ONLY" if read_only else b"READ-WRITE"), ("Examine" if read_only else "Select") + \
        " completed."


async def _list_line(session, box) -> bytes:
    """What LIST answers for `box` (its selectability and children as a plain LIST says)."""
    names = [b.name for b in await session.store.list_mailboxes(session.account.id)]
    attrs = ["\\HasChildren" if Children(names).has_children(box.name) else "\\HasNoChildren"]
    if box.special_use:
        attrs.append(box.special_use)
    return b"LIST (" + " ".join(attrs).encode() + b') "/" ' + mailbox_wire(box.name, session.utf8)


async def examine(session, cmd):
    return await select(session, cmd, read_only=True)


# ---- CREATE / DELETE / RENAME / SUBSCRIBE -----------------------------------------------------

def _clean(name: str) -> str:
    name = name.rstrip(SEP)   # RFC 3501 6.3.3: a trailing separator only declares the intent
    if not name or SEP * 2 in name or name.startswith(SEP):
        raise Reply.no("Invalid mailbox name.")
    return name


async def _create_parents(session, name: str) -> None:
    parts = name.split(SEP)
    existing = {m.name for m in await session.store.list_mailboxes(session.account.id)}
    for depth in range(1, len(parts)):
        parent = SEP.join(parts[:depth])
        if parent not in existing and parent.upper() != INBOX:
            await session.store.create_mailbox(session.account.id, parent)


async def create(session, cmd):
    if len(cmd.args) != 1:
        raise Reply.bad("CREATE expects one mailbox name")
    name = _clean(mailbox(cmd.args[0], session.utf8))
    if name == INBOX or await session.store.get_mailbox(session.account.id, name) is not None:
        raise Reply.no("Mailbox already exists.", b"ALREADYEXISTS")
    await _create_parents(session, name)   # 6.3.3: SHOULD create superior names
    box = await session.store.create_mailbox(session.account.id, name)
    box_id = session.backend.object_ids.mailbox(box.id)
    return b"MAILBOXID (" + box_id + b")", "CREATE completed."   # RFC 8474 4.1


async def delete(session, cmd):
    if len(cmd.args) != 1:
        raise Reply.bad("DELETE expects one mailbox name")
    name = mailbox(cmd.args[0], session.utf8)
    if name == INBOX:   # 6.3.4: deleting INBOX is an error
        raise Reply.no("INBOX cannot be deleted.")
    box = await session.store.get_mailbox(session.account.id, name)
    if box is None:
        raise Reply.no(f"Mailbox does not exist: {name}", b"NONEXISTENT")
    bodies = await session.store.delete_mailbox(session.account.id, name)
    if session.view is not None and session.view.mailbox_id == box.id:
        # Dovecot 2.3.19's words and behaviour (checked): the tagged OK, then BYE and close
        session.deselect()
        session.bye_after_reply = b"Selected mailbox was deleted, have to disconnect."
    session.backend.hub.gone(box.id)
    session.backend.index.forget(box.id)   # as another process's DELETE does (service.gone)
    session.backend.index.remember(name, None)
    # a body may be shared with an expunged copy elsewhere that a session still shows (RFC
    # 2180 4.1.1): the hub collects only those no view pins
    session.backend.hub.orphaned(bodies)
    return None


async def rename(session, cmd):
    if len(cmd.args) != 2:
        raise Reply.bad("RENAME expects two mailbox names")
    old, new = mailbox(cmd.args[0], session.utf8), _clean(mailbox(cmd.args[1], session.utf8))
    store, account = session.store, session.account.id
    box = await store.get_mailbox(account, old)
    if box is None:
        raise Reply.no(f"Mailbox does not exist: {old}", b"NONEXISTENT")
    if new == INBOX or await store.get_mailbox(account, new) is not None:
        raise Reply.no("Target mailbox already exists.", b"ALREADYEXISTS")
    before = await store.highest_modseq(box.id) if old == INBOX else 0
    renamed = [m.id for m in await store.list_mailboxes(account)
               if m.id == box.id or m.name.startswith(box.name + SEP)] if old != INBOX else []
    await _create_parents(session, new)
    await store.rename_mailbox(account, old, new)
    view = session.view
    for renamed_id in renamed:   # as Dovecot: other sessions that have one selected get BYE
        session.backend.hub.gone(renamed_id, origin=view)
    if old == INBOX:   # 6.3.5: INBOX's messages moved to the new name, INBOX stays (empty)
        # What the rename moved, from the change log: a message ingested while it ran is
        # included (a list read before the rename would miss it: sessions would keep it forever)
        changes = await store.changes_since(box.id, before)
        moved = [c.uid for c in changes if c.kind is ChangeKind.EXPUNGE]
        session.backend.hub.expunged(box.id, moved)
    return None


async def subscribe(session, cmd, subscribed: bool = True):
    """RFC 3501 6.3.6/6.3.7: a name, whether or not a mailbox has it now (the server MAY check,
    Dovecot does; we do not, so a client may subscribe before it creates); DELETE and RENAME
    leave subscriptions alone ("MUST NOT unilaterally remove"), as Dovecot does."""
    if len(cmd.args) != 1:
        raise Reply.bad("Expected one mailbox name")
    name = mailbox(cmd.args[0], session.utf8)
    if subscribed:
        name = _clean(name)
    await session.store.set_subscribed(session.account.id, name, subscribed)
    return None


async def unsubscribe(session, cmd):
    return await subscribe(session, cmd, subscribed=False)


# ---- LIST / LSUB ----------------------------------------------------------------------------

async def list_(session, cmd, lsub: bool = False):
    if len(cmd.args) != 2 or isinstance(cmd.args[0], tuple):
        raise Reply.bad("LIST expects a reference and a mailbox pattern")   # no LIST-EXTENDED
    try:
        reference = _names.decode(astring(cmd.args[0]), session.utf8)
        raw = _names.decode(astring(cmd.args[1]), session.utf8)
    except _names.BadName:
        return None   # no stored name can match a malformed pattern: OK (as Dovecot)
    verb = b"LSUB" if lsub else b"LIST"
    if raw == "" and not lsub:   # 6.3.8: the hierarchy delimiter and root
        session.emit(b'LIST (\\Noselect) "/" ""')
        return None
    full = reference + raw if not reference or reference.endswith(SEP) or raw.startswith(SEP) \
        else reference + SEP + raw
    if full[:5].upper() == INBOX:   # INBOX is case-insensitive (5.1), other names are not
        full = INBOX + full[5:]
    pattern = MailboxPattern(full)
    boxes = await session.store.list_mailboxes(session.account.id)
    real = {b.name: b for b in boxes}
    shown = set(await session.store.subscriptions(session.account.id)) if lsub else set(real)
    tree = Children(real)
    matched = {n for n in shown | implied_parents(shown) if pattern.matches(n)}
    if lsub:   # 6.3.9: an unsubscribed parent only where "%" cut off a subscribed child
        cut = implied_parents(shown - matched)
        matched = {n for n in matched if n in shown or n in cut}
    for name in sorted(matched, key=lambda n: (n != INBOX, n)):
        await session.budget.tick()
        attrs = []
        if name not in shown:   # LSUB: a subscribed name with no mailbox is (), as Dovecot
            attrs.append("\\Noselect")
        if not lsub:
            attrs.append("\\HasChildren" if tree.has_children(name) else "\\HasNoChildren")
            box = real.get(name)
            if box is not None and box.special_use:
                attrs.append(box.special_use)
        wire = mailbox_wire(name, session.utf8)
        session.emit(verb + b" (" + " ".join(attrs).encode() + b') "/" ' + wire)
    return None


async def lsub(session, cmd):
    return await list_(session, cmd, lsub=True)


# ---- STATUS ---------------------------------------------------------------------------------

async def status(session, cmd):
    if len(cmd.args) != 2 or not isinstance(cmd.args[1], tuple) or not cmd.args[1]:
        raise Reply.bad("STATUS expects a mailbox and a list of items")
    name = mailbox(cmd.args[0], session.utf8)
    items = status_items(cmd.args[1], IMAP4REV2 in session.enabled)
    box = await session.store.get_mailbox(session.account.id, name)
    if box is None:
        raise Reply.no(f"Mailbox does not exist: {name}", b"NONEXISTENT")
    session.emit(await status_line(session, box, items))
    return None


def status_items(values, rev2: bool) -> list[bytes]:
    """STATUS data item names (RFC 3501 6.3.10, RFC 7162 3.1.6, RFC 8438); BAD if unknown,
    RECENT included in an IMAP4rev2 session (RFC 9051 status-att has no RECENT: no \\Recent)."""
    if not isinstance(values, tuple) or not values:
        raise Reply.bad("Expected a list of STATUS items")
    items = [word(item) for item in values]
    if any(item not in _STATUS_ITEMS or (rev2 and item == b"RECENT") for item in items):
        raise Reply.bad("Unknown STATUS item")
    return items


async def status_line(session, box, items: list[bytes]) -> bytes:
    """The untagged STATUS response of `box` (also LIST-STATUS's, RFC 5819)."""
    if b"HIGHESTMODSEQ" in items:
        await cs.enable_condstore(session)
    snap = await session.backend.index.snapshot(session.store, box) \
        if set(items) & {b"UNSEEN", b"SIZE", b"RECENT", b"DELETED", b"DELETED-STORAGE"} else None
    recent = 0
    if snap is not None and b"RECENT" in items:   # not yet recent anywhere: at/above the floor
        floor = await session.store.recent_floor(box.id)
        recent = len(snap.uids) - bisect.bisect_left(snap.uids, floor)
    values: dict[bytes, int | bytes] = {
        b"MAILBOXID": b"(" + session.backend.object_ids.mailbox(box.id) + b")",   # RFC 8474 4.3
        b"MESSAGES": box.exists,
        b"RECENT": recent,
        b"UIDNEXT": box.uidnext,
        b"UIDVALIDITY": box.uidvalidity,
        b"HIGHESTMODSEQ": box.highest_modseq,
        b"UNSEEN": snap.unseen if snap is not None else 0,
        b"SIZE": await _size(session, snap) if b"SIZE" in items else 0,
    }
    if snap is not None and (b"DELETED" in items or b"DELETED-STORAGE" in items):
        deleted = [m for m in snap.metas if "\\Deleted" in m.flags]
        values[b"DELETED"] = len(deleted)
        values[b"DELETED-STORAGE"] = quota.kib(sum(m.size for m in deleted))   # as STORAGE
    body = b" ".join(b"%s %s" % (item, _value(values[item])) for item in items)
    return b"STATUS " + mailbox_wire(box.name, session.utf8) + b" (" + body + b")"


def _value(value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else b"%d" % value


async def _size(session, snap) -> int:
    """RFC 8438 STATUS SIZE: the sum of the messages' RFC822.SIZE (from the MIME cache, which
    knows the virtual size; in slices of one store call each)."""
    metas = snap.metas
    total = 0
    for start in range(0, len(metas), 1024):
        part = metas[start:start + 1024]
        infos = await session.backend.mime.infos(session.store, part)
        total += sum(i.size if i is not None else m.size for i, m in zip(infos, part, strict=True))
    return total


async def namespace(session, cmd):
    session.emit(b'NAMESPACE (("" "/")) NIL NIL')   # RFC 2342: one personal namespace
    return None
