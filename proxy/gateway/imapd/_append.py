"""APPEND (RFC 3501 6.3.11) with MULTIAPPEND (RFC 3502) and UIDPLUS's APPENDUID (RFC 4315).

Theory of operation: the arguments after the mailbox name are one or more groups of
`[flag-list] [date-time] literal` (3502 6); a literal is told from a quoted date-time by its type
(the parser marks collected literals, `imap._tokens.Literal`). Every message is checked (not
empty, quota) and analysed before anything is stored, then all are stored in one store
transaction (`append_many`): MULTIAPPEND is atomic (3502 3: "If the server fails to append any
message, none of the messages are appended"), and the messages share one MODSEQ. The reply
carries APPENDUID with the UID set, in order (4315 3). A message may be a CATENATE list
(RFC 4469, `_catenate.py`): built, URLs resolved, before anything is stored, so a bad URL stores
nothing.
"""

from __future__ import annotations

import datetime as dt

from ...imap._tokens import Literal
from ...store import AppendItem
from . import _catenate as cat
from . import _quota as quota
from ._args import Reply, is_atom, mailbox, parse_date_time, parse_flags, uid_list
from ._caches import analyze
from ._message_changes import adding_to, publish_appended

Group = tuple[list[str], "dt.datetime | None", "bytes | cat.Catenate"]


def groups(args, utf8: bool = False) -> list[Group]:
    """`[flags] [date-time] literal` groups (RFC 3502 6); BAD when the grammar is not met.
    `UTF8 (literal8)` may stand for the literal once UTF8=ACCEPT is enabled (RFC 6855 4)."""
    out: list[Group] = []
    i = 0
    while i < len(args):
        flags: list[str] = []
        when = None
        if isinstance(args[i], tuple):
            flags = parse_flags(args[i], allow_recent=True)
            i += 1
        if i < len(args) and isinstance(args[i], bytes) and not isinstance(args[i], Literal) \
                and not _is_utf8(args[i]) and not cat.is_catenate(args, i):
            when = parse_date_time(args[i])
            i += 1
        if i < len(args) and _is_utf8(args[i]):
            out.append((flags, when, _utf8_data(args[i + 1:i + 2], utf8)))
            i += 2
            continue
        if i < len(args) and cat.is_catenate(args, i):   # RFC 4469 5
            out.append((flags, when, cat.parse(args[i + 1])))
            i += 2
            continue
        if i >= len(args) or not isinstance(args[i], Literal):
            raise Reply.bad("APPEND expects a mailbox, then optional flags and date and a "
                            "message literal, once or more (MULTIAPPEND)")
        out.append((flags, when, args[i]))   # a Literal is bytes: no copy of a big message
        i += 1
    return out


def _is_utf8(arg) -> bool:
    # the length first: a 50 MB message literal is not copied and upper-cased to be told apart
    return is_atom(arg) and len(arg) == 4 and bytes(arg).upper() == b"UTF8"


def _utf8_data(following: list, utf8: bool) -> bytes:
    """The message of `UTF8 (literal8)`; BAD unless UTF8=ACCEPT was enabled (RFC 6855 4)."""
    if not utf8:
        raise Reply.bad("APPEND with UTF8 data needs ENABLE UTF8=ACCEPT first")
    data = following[0] if following else None
    if not (isinstance(data, tuple) and len(data) == 1 and isinstance(data[0], Literal)):
        raise Reply.bad("UTF8 expects a literal in parentheses")
    return data[0]   # a Literal is bytes: no copy


async def append(session, cmd):
    if len(cmd.args) < 2:
        raise Reply.bad("APPEND expects a mailbox, optional flags and date, and a message literal")
    name = mailbox(cmd.args[0], session.utf8)
    parsed = groups(cmd.args[1:], session.utf8)
    box = await session.store.get_mailbox(session.account.id, name)
    if box is None:   # RFC 3501 6.3.11
        raise Reply.no(f"Mailbox does not exist: {name}", b"TRYCREATE")
    # the messages of one command together within max_literal, as their literals are (session.py)
    room = session.session.listener.limits.max_literal - sum(
        len(body) for _, _, body in parsed if isinstance(body, bytes))
    messages = []
    for flags, when, body in parsed:
        if not isinstance(body, bytes):
            body = await cat.build(session, body, room)
            room -= len(body)
        messages.append((flags, when, body))
    if any(not body for _, _, body in messages):
        raise Reply.no("Cannot append an empty message.")
    await quota.check(session, sum(len(body) for _, _, body in messages), len(messages))
    mime = session.backend.mime
    items = [AppendItem(body, flags, when, *await analyze(body, mime.limits, mime.workers))  # once

             for flags, when, body in messages]
    if len(items) == 1:
        item = items[0]
        uids = [await adding_to(session, box, lambda: session.store.append(
            box.id, item.body, item.flags, item.internaldate, cache=item.cache,
            sort_fields=item.sort_fields))]
    else:
        uids = await adding_to(session, box, lambda: session.store.append_many(box.id, items))
    await publish_appended(session, box.id)
    return b"APPENDUID %d %s" % (box.uidvalidity, uid_list(uids)), "APPEND completed."
