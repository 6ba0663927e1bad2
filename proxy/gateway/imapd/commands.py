"""The command table: every command the server knows, the states it is valid in (RFC 3501 6),
its handler, and whether other sessions' expunges may be announced when it completes
(RFC 3501 7.4.1: not during FETCH, STORE, SEARCH). CAPABILITY is generated from `CAPABILITIES`,
which lists only what is implemented and tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from . import _append as app
from . import _compress, _idle
from . import _context as ctx
from . import _list_ext as lx
from . import _mailboxes as mb
from . import _message_changes as chg
from . import _messages as msg
from . import _quota as quota
from . import _sort as srt
from ._args import Reply
from ._state import ANY, AUTH, PRE, SEL, Trigger

# Post-login capabilities (RFC 3501 7.2.1). SASL-IR and AUTH= are the pre-login front's.
CAPABILITIES = (b"IMAP4rev1", b"LITERAL+", b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"ID",
                b"ENABLE", b"UNSELECT", b"SPECIAL-USE", b"CHILDREN", b"ESEARCH", b"CONDSTORE",
                b"QRESYNC", b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT",
                b"THREAD=REFERENCES", b"SEARCHRES", b"WITHIN", b"LIST-EXTENDED", b"LIST-STATUS",
                b"STATUS=SIZE", b"COMPRESS=DEFLATE", b"QUOTA", b"QUOTA=RES-STORAGE",
                b"QUOTA=RES-MESSAGE", b"MULTIAPPEND", b"UNAUTHENTICATE", b"UTF8=ACCEPT", b"BINARY",
                b"PREVIEW", b"CATENATE", b"SAVEDATE", b"OBJECTID", b"PARTIAL",
                b"CONTEXT=SEARCH", b"CONTEXT=SORT", b"IMAP4rev2")
# Extensions ENABLE (RFC 5161) can turn on; QRESYNC implies CONDSTORE (RFC 7162 3.2.3).
# UTF8=ACCEPT (RFC 6855 3): UTF-8 mailbox names (`_names`), APPEND's UTF8 data, no SEARCH CHARSET.
# IMAP4rev2 (RFC 9051, appendix E): UTF-8 names, no \Recent, ESEARCH answers, LIST on SELECT.
ENABLEABLE: frozenset[bytes] = frozenset({b"CONDSTORE", b"QRESYNC", b"UTF8=ACCEPT", b"IMAP4REV2"})

_SPELLING = {b"IMAP4REV2": b"IMAP4rev2"}   # as CAPABILITY writes it

Handler = Callable[[Any, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    states: frozenset
    handler: Handler
    expunge_ok: bool = True


async def _capability(session, cmd):
    session.emit(b"CAPABILITY " + b" ".join(CAPABILITIES))


async def _noop(session, cmd):
    return None   # pending updates are sent by the session after every command (6.1.2)


async def _logout(session, cmd):
    session.emit(b"BYE Logging out.")   # RFC 3501 6.1.3: BYE, then the tagged OK
    session.deselect()
    session.transition(Trigger.LOGOUT)


async def _id(session, cmd):
    session.emit(b'ID ("name" "mailproxy" "vendor" "mailproxy gateway")')   # RFC 2971


async def _enable(session, cmd):
    if not cmd.args:
        raise Reply.bad("ENABLE expects capability names")
    enabled = [bytes(a).upper() for a in cmd.args if isinstance(a, bytes)
               and bytes(a).upper() in ENABLEABLE]
    enabled = [e for e in dict.fromkeys(enabled) if e not in session.enabled]   # RFC 5161 3.1
    session.enabled.update(enabled)
    if b"QRESYNC" in session.enabled:
        session.enabled.add(b"CONDSTORE")
    session.emit(b"ENABLED" + b"".join(b" " + _SPELLING.get(e, e) for e in enabled))   # 5161 3.1


async def _unauthenticate(session, cmd):
    """RFC 8437 3: the account's state is released (selected mailbox, its hub subscription);
    the session then ends and a new pre-login front takes the connection, without a greeting.
    TLS and COMPRESS stay as they are (they belong to the connection)."""
    if cmd.args:
        raise Reply.bad("UNAUTHENTICATE takes no arguments")
    session.deselect()
    session.transition(Trigger.UNAUTHENTICATE)


async def _already(session, cmd):
    raise Reply.bad("Already authenticated.")


COMMANDS: dict[bytes, CommandSpec] = {
    # any state (RFC 3501 6.1)
    b"CAPABILITY": CommandSpec(ANY, _capability),
    b"NOOP": CommandSpec(ANY, _noop),
    b"LOGOUT": CommandSpec(ANY, _logout),
    b"ID": CommandSpec(ANY, _id),
    # not authenticated (6.2): handled by the pre-login front; here they are out of state
    b"LOGIN": CommandSpec(PRE, _already),
    b"AUTHENTICATE": CommandSpec(PRE, _already),
    b"STARTTLS": CommandSpec(PRE, _already),
    # authenticated (6.3)
    b"SELECT": CommandSpec(AUTH, mb.select),
    b"EXAMINE": CommandSpec(AUTH, mb.examine),
    b"CREATE": CommandSpec(AUTH, mb.create),
    b"DELETE": CommandSpec(AUTH, mb.delete),
    b"RENAME": CommandSpec(AUTH, mb.rename),
    b"SUBSCRIBE": CommandSpec(AUTH, mb.subscribe),
    b"UNSUBSCRIBE": CommandSpec(AUTH, mb.unsubscribe),
    b"LIST": CommandSpec(AUTH, lx.list_),    # RFC 3501, LIST-EXTENDED, LIST-STATUS
    b"LSUB": CommandSpec(AUTH, mb.lsub),
    b"STATUS": CommandSpec(AUTH, mb.status),
    b"APPEND": CommandSpec(AUTH, app.append),         # RFC 3502 MULTIAPPEND, RFC 4469 too
    b"NAMESPACE": CommandSpec(AUTH, mb.namespace),
    b"GETQUOTAROOT": CommandSpec(AUTH, quota.getquotaroot),   # RFC 9208
    b"GETQUOTA": CommandSpec(AUTH, quota.getquota),
    b"SETQUOTA": CommandSpec(AUTH, quota.setquota),
    b"ENABLE": CommandSpec(AUTH - SEL, _enable),
    b"IDLE": CommandSpec(AUTH, _idle.idle),
    b"COMPRESS": CommandSpec(AUTH, _compress.compress),   # RFC 4978
    b"UNAUTHENTICATE": CommandSpec(AUTH, _unauthenticate),   # RFC 8437
    # selected (6.4)
    b"CHECK": CommandSpec(SEL, chg.check),
    b"CLOSE": CommandSpec(SEL, chg.close),
    b"UNSELECT": CommandSpec(SEL, chg.unselect),
    b"EXPUNGE": CommandSpec(SEL, chg.expunge),
    b"SEARCH": CommandSpec(SEL, msg.search, expunge_ok=False),
    b"FETCH": CommandSpec(SEL, msg.fetch, expunge_ok=False),
    b"STORE": CommandSpec(SEL, chg.store, expunge_ok=False),
    b"COPY": CommandSpec(SEL, chg.copy),
    b"MOVE": CommandSpec(SEL, chg.move),
    b"UID SEARCH": CommandSpec(SEL, msg.search),
    b"UID FETCH": CommandSpec(SEL, msg.fetch),
    b"UID STORE": CommandSpec(SEL, chg.store),
    b"UID COPY": CommandSpec(SEL, chg.copy),
    b"UID MOVE": CommandSpec(SEL, chg.move),
    b"UID EXPUNGE": CommandSpec(SEL, chg.expunge),
    b"SORT": CommandSpec(SEL, srt.sort, expunge_ok=False),          # RFC 5256, 5957, 5267
    b"UID SORT": CommandSpec(SEL, srt.sort),
    b"THREAD": CommandSpec(SEL, srt.thread, expunge_ok=False),      # RFC 5256
    b"UID THREAD": CommandSpec(SEL, srt.thread),
    b"CANCELUPDATE": CommandSpec(SEL, ctx.cancelupdate),           # RFC 5267 4.3.5
}
