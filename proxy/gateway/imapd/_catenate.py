"""CATENATE (RFC 4469): an APPEND message built from text literals and parts of stored messages.

Theory of operation: `parse()` checks the `CATENATE (...)` list's grammar (4469 5: cat-part is
`TEXT literal` or `URL astring`) when the command is read, so a bad list is BAD before anything
happens. `build()` then resolves each URL and joins the parts; APPEND stores the result (with the
other messages of a MULTIAPPEND) in one store transaction only after every message was built, so
a bad URL anywhere stores nothing (4469 5: NO [BADURL url]).

URLs are the relative IMAP URLs of RFC 5092 restricted to the logged-in account:
`/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]` (names and sections
percent-encoded, mailbox names in UTF-8). The part is what BODY.PEEK[section]<o.l> gives (no
\\Seen). An absolute URL `imap://user[;AUTH=x]@host[:port]/...` is as good as its relative
path when it names this server and the logged-in user (RFC 4469 5, RFC 5092 3): "this server"
is a host listed in `gateway.url_hosts` (the session cannot know by which names clients reach
it; the port is not checked), the user is compared as logins are (`gateway.user_case`); a URL
without a user means anonymous access (5092 3.2), not this user. Any other absolute URL,
URLAUTH, a mailbox or message that does not exist, a UIDVALIDITY that does not match, or a
malformed URL is BADURL, as Dovecot answers for the same account (it refuses every absolute
URL). The built message is bounded by the listener's
`max_literal`, like any APPEND literal (NO [TOOBIG]).

Known differences from Dovecot 2.3 (tests/gateway_imapd/test_catenate.py): a TEXT literal8 is
taken (Dovecot answers NO [UNKNOWN-CTE] to any), an empty built message is refused as an empty
APPEND is (Dovecot stores it), and a part ending in a lone CR is stored as it is (Dovecot drops
that CR).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from ...imap._tokens import Literal
from ..mime import table_to_parts
from ..numbers import InvalidNumber, number
from ..sections import SectionError, fetch_section
from ..users import canonical_user
from ._args import Reply, is_atom

_URL = re.compile(
    rb"/(?P<mailbox>[^;/][^;]*?)(?:;UIDVALIDITY=(?P<uidvalidity>[0-9]+))?/;UID=(?P<uid>[0-9]+)"
    rb"(?:/;SECTION=(?P<section>[^;]*?))?(?:/;PARTIAL=(?P<start>[0-9]+)(?:\.(?P<length>[0-9]+))?)?",
    re.IGNORECASE)


# RFC 5092 3: "imap://" [enc-user [";AUTH=" ("*" / enc-auth-type)] "@"] host [":" port] path
_ABSOLUTE = re.compile(
    rb"imap://(?:(?P<user>[^;@/]+)(?:;AUTH=[^@/;]+)?@)?(?P<host>\[[^]/]+\]|[^:/@\[\]]+)"
    rb"(?::[0-9]+)?(?P<path>/.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Catenate:
    """The parts of one CATENATE message: bytes for TEXT, `_Url` for URL."""

    parts: tuple


@dataclass(frozen=True, slots=True)
class _Url:
    text: bytes


def is_catenate(args, i: int) -> bool:
    return (is_atom(args[i]) and len(args[i]) == 8 and bytes(args[i]).upper() == b"CATENATE"
            and i + 1 < len(args) and isinstance(args[i + 1], tuple))   # length first: see _append


def parse(value: tuple) -> Catenate:
    """The cat-part list (RFC 4469 5); BAD when it does not follow the grammar."""
    if not value or len(value) % 2:
        raise Reply.bad("CATENATE expects TEXT literal and URL url parts")
    parts: list[bytes | _Url] = []
    for kind, data in zip(value[::2], value[1::2], strict=True):
        name = bytes(kind).upper() if is_atom(kind) and len(kind) <= 4 else b""   # TEXT, URL
        if name == b"TEXT" and isinstance(data, Literal):
            parts.append(bytes(data))
        elif name == b"URL" and isinstance(data, bytes) and not isinstance(data, Literal):
            parts.append(_Url(bytes(data)))
        else:
            raise Reply.bad("CATENATE expects TEXT literal and URL url parts")
    return Catenate(tuple(parts))


async def build(session, message: Catenate, limit: int) -> bytes:
    """The message `message` makes; NO [BADURL] / NO [TOOBIG] (see the module docstring)."""
    out: list[bytes] = []
    size = 0
    for part in message.parts:
        data = part if isinstance(part, bytes) else await _resolve(session, part.text)
        size += len(data)
        if size > limit:
            raise Reply.no("Message too big.", b"TOOBIG")
        out.append(data)
    return b"".join(out)


async def _resolve(session, url: bytes) -> bytes:
    def bad(why: str) -> Reply:
        return Reply.no(why, b"BADURL " + url)

    match = _URL.fullmatch(_own_path(session, url) if url[:7].lower() == b"imap://" else url)
    if match is None:
        raise bad("Only IMAP URLs of this account are supported")
    try:
        uid = number(match["uid"], nonzero=True)
        uidvalidity = number(match["uidvalidity"]) if match["uidvalidity"] else None
        partial = None
        if match["start"] is not None:
            length = number(match["length"]) if match["length"] else 1 << 62
            partial = (number(match["start"]), length)
        name = urllib.parse.unquote_to_bytes(match["mailbox"]).decode("utf-8")
        section = urllib.parse.unquote_to_bytes(match["section"] or b"")
    except (InvalidNumber, UnicodeDecodeError):
        raise bad("Invalid IMAP URL") from None
    box = await session.store.get_mailbox(session.account.id,
                                          "INBOX" if name.upper() == "INBOX" else name)
    if box is None:
        raise bad(f"Mailbox doesn't exist: {name}")
    if uidvalidity is not None and uidvalidity != box.uidvalidity:
        raise bad("Invalid UIDVALIDITY")
    metas = await session.store.messages_by_uid(box.id, [uid])
    mime = session.backend.mime
    raw = (await mime.bodies.get_many(session.store, metas))[0] if metas else None
    info = (await mime.infos(session.store, metas))[0] if raw is not None else None
    if raw is None or info is None:   # never stored, or expunged meanwhile (RFC 2180 4.1)
        raise bad("Message not found")
    try:
        return fetch_section(raw, section, partial, parts=table_to_parts(info.parts),
                             max_header_bytes=mime.limits.max_header_bytes)
    except SectionError:
        raise bad("Invalid section") from None


def _own_path(session, url: bytes) -> bytes:
    """The path of an absolute URL that names this server and user (module docstring), else
    b"" (no match: BADURL)."""
    match = _ABSOLUTE.fullmatch(url)
    if match is None or match["user"] is None:
        return b""
    try:
        user = urllib.parse.unquote_to_bytes(match["user"]).decode("utf-8")
        host = urllib.parse.unquote_to_bytes(match["host"]).decode("utf-8").lower()
    except UnicodeDecodeError:
        return b""
    if host not in session.url_hosts or \
            canonical_user(user, session.user_case) != session.account.user:
        return b""
    return match["path"]
