"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and the SPECIAL-USE options (RFC 6154).

A LIST with selection options, several patterns or RETURN options is extended; a plain LIST
keeps the RFC 3501 path in `_mailboxes.list_`. In the extended form (5258 3, as Dovecot
answers it): a name implied by its children that is not a mailbox is \\NonExistent rather than
\\Noselect; \\Subscribed, \\HasChildren/\\HasNoChildren and special-use attributes are given
when selected or asked for; RECURSIVEMATCH also lists a matching name whose descendants meet
the selection, with CHILDINFO; RETURN (STATUS (...)) follows each selectable mailbox's LIST
line with its STATUS (5819 2).
"""

from __future__ import annotations

from ...store.base import INBOX
from . import _mailboxes as mb
from . import _names
from ._args import Reply, astring, mailbox_wire, word
from ._listing import Children, MailboxPattern, implied_parents

SEP = mb.SEP
_SELECTION = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
_RETURN = {b"SUBSCRIBED", b"CHILDREN", b"STATUS", b"SPECIAL-USE"}


def _options(value, known: set[bytes], what: str, rev2: bool) -> list:
    if not isinstance(value, tuple):
        raise Reply.bad(f"Expected a list of {what} options")
    items = list(value)
    out: list[tuple[bytes, list[bytes] | None]] = []
    while items:
        option = word(items.pop(0))
        if option not in known:
            raise Reply.bad(f"Unknown {what} option")
        if option == b"STATUS":
            out.append((option, mb.status_items(items.pop(0) if items else None, rev2)))
        else:
            out.append((option, None))
    return out


def _parse(args: list, rev2: bool) -> tuple[set[bytes], dict, object, list] | None:
    """(selection options, return options, reference, patterns), or None for a plain LIST."""
    selection: set[bytes] = set()
    extended = False
    if args and isinstance(args[0], tuple):
        selection = {o for o, _ in _options(args.pop(0), _SELECTION, "selection", rev2)}
        extended = True
    if len(args) not in (2, 4) or isinstance(args[0], tuple):
        raise Reply.bad("LIST expects a reference and mailbox patterns")
    returns: dict = {}
    if len(args) == 4:
        if word(args[2]) != b"RETURN":
            raise Reply.bad("Expected RETURN")
        returns = dict(_options(args[3], _RETURN, "return", rev2))
        extended = True
    patterns = args[1]
    if isinstance(patterns, tuple):
        extended = True
        if not patterns:
            raise Reply.bad("Expected mailbox patterns")
    else:
        patterns = (patterns,)
    if not extended:
        return None
    if b"RECURSIVEMATCH" in selection and not selection - {b"RECURSIVEMATCH", b"REMOTE"}:
        raise Reply.bad("RECURSIVEMATCH must not be the only selection")   # RFC 5258 3.1
    return selection, returns, args[0], [astring(p) for p in patterns]


def _matchers(reference: bytes, patterns: list[bytes], utf8: bool) -> list[MailboxPattern]:
    out = []
    try:
        ref = _names.decode(reference, utf8)
    except _names.BadName:
        return []
    for raw in patterns:
        try:
            text = _names.decode(raw, utf8)
        except _names.BadName:
            continue   # as plain LIST: no match
        full = ref + text if not ref or ref.endswith(SEP) or text.startswith(SEP) \
            else ref + SEP + text
        if full[:5].upper() == INBOX:
            full = INBOX + full[5:]
        if full:
            out.append(MailboxPattern(full))
    return out


async def list_(session, cmd):
    parsed = _parse(list(cmd.args), _names.IMAP4REV2 in session.enabled)
    if parsed is None:
        return await mb.list_(session, cmd)
    selection, returns, reference, patterns = parsed
    matchers = _matchers(astring(reference), patterns, session.utf8)
    boxes = await session.store.list_mailboxes(session.account.id)
    real = {b.name: b for b in boxes}
    subscribed = set(await session.store.subscriptions(session.account.id))
    if b"SUBSCRIBED" in selection:
        selected = set(subscribed)
    elif b"SPECIAL-USE" in selection:   # RFC 6154 3
        selected = {n for n, b in real.items() if b.special_use}
    else:
        selected = set(real) | implied_parents(real)
    if b"SUBSCRIBED" in selection and b"SPECIAL-USE" in selection:
        selected = {n for n in selected if n in real and real[n].special_use}
    def matching(name: str) -> bool:
        return any(m.matches(name) for m in matchers)

    listed = {n for n in selected if matching(n)}
    childinfo: set[str] = set()
    if b"RECURSIVEMATCH" in selection:   # RFC 5258 3.5: as Dovecot answers it
        # a name that is not selected itself is listed for selected descendants the pattern
        # did not reach; every listed name with a selected descendant carries CHILDINFO
        listed |= {p for p in implied_parents(selected - listed) if matching(p)}
        childinfo = listed & implied_parents(selected)
    tree = Children(real)
    show_subscribed = b"SUBSCRIBED" in selection or b"SUBSCRIBED" in returns
    show_special = b"SPECIAL-USE" in selection or b"SPECIAL-USE" in returns
    status = returns.get(b"STATUS")
    for name in sorted(listed, key=lambda n: (n != INBOX, n)):
        box = real.get(name)
        attrs = []
        if show_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        if box is None:   # an implied parent, or a subscribed name with no mailbox (5258 3)
            attrs.append("\\NonExistent")
        if b"CHILDREN" in returns:
            attrs.append("\\HasChildren" if tree.has_children(name) else "\\HasNoChildren")
        if show_special and box is not None and box.special_use:
            attrs.append(box.special_use)
        wire = mailbox_wire(name, session.utf8)
        line = b"LIST (" + " ".join(attrs).encode() + b') "/" ' + wire
        if name in childinfo:
            line += b' (CHILDINFO ("SUBSCRIBED"))'
        session.emit(line)
        if status is not None and box is not None:   # RFC 5819 2: selectable mailboxes only
            session.emit(await mb.status_line(session, box, status))
    return None
