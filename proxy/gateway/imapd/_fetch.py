"""FETCH (RFC 3501 6.4.5, 7.4.2): attribute parsing and rendering.

Theory of operation: ENVELOPE, BODY, BODYSTRUCTURE and the virtual RFC822.SIZE come from the
MIME analysis computed once per stored body (`_caches`). The FETCH handler loads a chunk of
messages with one store call for the MIME infos and one for the bodies (`plan()` says which
are needed: a whole-message BODY[]/RFC822 needs no MIME work), then `render()` is synchronous.
Body sections are cut by `sections.fetch_section` from the raw body with the cached part table.
BINARY sections (RFC 3516) are decoded per chunk before `render()` (`_binary.decode_chunk`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...store import MessageMeta
from .._parts import DEFAULT_LIMITS
from ..binary import BinaryError
from ..mime import nstring, table_to_parts
from ..sections import SectionError, crlf, fetch_section, split_section
from ._args import Reply, flag_list, format_date_time, is_atom, parse_number
from ._objectid import ObjectIds

_BODY_ITEM = re.compile(rb"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK)\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?$",
                        re.IGNORECASE)
_BINARY_SIZE = re.compile(rb"^BINARY\.SIZE\[([^\]]*)\]$", re.IGNORECASE)   # RFC 3516 4.2
_MACROS = {
    b"ALL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"),
    b"FAST": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"),
    b"FULL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"),
}
_SIMPLE = {b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY", b"BODYSTRUCTURE",
           b"UID", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"MODSEQ",   # MODSEQ: RFC 7162 3.1.4
           b"PREVIEW",   # RFC 8970
           b"SAVEDATE", b"EMAILID", b"THREADID"}   # RFC 8514 4.2, RFC 8474 5
_SETS_SEEN = {b"RFC822", b"RFC822.TEXT"}   # RFC 3501 6.4.5: these set \Seen, RFC822.HEADER does not
# RFC 9051 appendix E: RFC822, RFC822.HEADER and RFC822.TEXT were deprecated and its fetch-att
# (9) has none of them (RFC822.SIZE stays): BAD after ENABLE IMAP4rev2, like STATUS RECENT.
_NOT_IN_REV2 = {b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"}


@dataclass(frozen=True, slots=True)
class Item:
    name: bytes                 # upper-case item, or b"BODY[]" for sections
    section: bytes | None = None
    partial: tuple[int, int] | None = None
    peek: bool = True
    binary: bool = False        # BINARY[section] or BINARY.SIZE[section] (RFC 3516)

    @property
    def needs_body(self) -> bool:
        return self.section is not None or self.name in (b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT",
                                                          b"PREVIEW")

    @property
    def needs_mime(self) -> bool:
        return self.name in (b"ENVELOPE", b"BODY", b"BODYSTRUCTURE", b"RFC822.SIZE") or self.needs_body


def parse_items(arg: object, *, uid: bool, rev2: bool = False) -> list[Item]:
    """The fetch-att list of a FETCH; UID FETCH always includes UID (RFC 3501 6.4.8). `rev2`:
    the session enabled IMAP4rev2, whose grammar lacks the RFC822 items (`_NOT_IN_REV2`)."""
    raw = arg if isinstance(arg, tuple) else (arg,)
    if not raw:
        raise Reply.bad("Empty FETCH item list")
    items: list[Item] = [Item(b"UID")] if uid else []
    for value in raw:
        if isinstance(value, tuple) and items and items[-1].name == b"PREVIEW":
            _preview_modifiers(value)   # RFC 8970 3: PREVIEW (LAZY)
            continue
        if not is_atom(value):
            raise Reply.bad("Invalid FETCH item")
        word = bytes(value).upper()
        if rev2 and word in _NOT_IN_REV2:
            raise Reply.bad(f"{word.decode()} is not in IMAP4rev2 (RFC 9051): use BODY[] sections")
        if word in _MACROS and len(raw) == 1:
            items += [Item(name) for name in _MACROS[word]]
        elif word in _SIMPLE:
            items.append(Item(word, peek=word not in _SETS_SEEN))
        elif (match := _BINARY_SIZE.match(bytes(value))) is not None:
            items.append(Item(b"BINARY.SIZE", _binary_section(match.group(1)), binary=True))
        elif (match := _BODY_ITEM.match(bytes(value))) is not None:
            kind, section, start, length = match.groups()
            binary = kind.upper().startswith(b"BINARY")
            if binary:
                section = _binary_section(section)
            else:
                try:   # validate now: BAD before any response is sent
                    fetch_section(b"\r\n", section)
                except SectionError as exc:
                    raise Reply.bad(f"Invalid section: {exc}") from None
            partial = None
            if start is not None:
                partial = (parse_number(start, "Partial start"),
                           parse_number(length, "Partial length") if length is not None else 1 << 62)
            items.append(Item(b"BINARY[]" if binary else b"BODY[]", section, partial,
                              peek=kind.upper() in (b"BODY.PEEK", b"BINARY.PEEK"), binary=binary))
        else:
            raise Reply.bad(f"Unknown FETCH item {bytes(value)[:40].decode('ascii', 'replace')}")
    return list(dict.fromkeys(items))  # duplicates dropped, first occurrence kept


def _preview_modifiers(value: tuple) -> None:
    """RFC 8970 3: LAZY lets the server answer NIL; the preview is always computed here."""
    if not value or any(not is_atom(m) or bytes(m).upper() != b"LAZY" for m in value):
        raise Reply.bad("PREVIEW modifiers: only LAZY is supported")


def _binary_section(section: bytes) -> bytes:
    """RFC 3516 6 has part numbers only here; any BODY section is taken, as Dovecot does."""
    try:
        split_section(section)
    except SectionError as exc:
        raise Reply.bad(f"Invalid section: {exc}") from None
    return section


def plan(items: list[Item]) -> tuple[bool, bool]:
    """(needs MIME info, needs the raw body) for a FETCH of `items`. A whole-message BODY[] or
    RFC822 needs only the raw body: no MIME work (the part table is for sections)."""
    needs_mime = needs_body = False
    for item in items:
        if item.needs_body:
            needs_body = True
            if not _whole(item):
                needs_mime = True
        elif item.needs_mime:
            needs_mime = True
    return needs_mime, needs_body


def _whole(item: Item) -> bool:
    return not item.binary and item.partial is None and (item.section == b"" or item.name == b"RFC822")


def render(seq: int, meta: MessageMeta, items: list[Item], flags, info, raw,
           binaries=None, preview: str | None = None, ids: ObjectIds | None = None,
           max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes) -> list[bytes]:
    """`* seq FETCH (...)` CRLF for one message, as pieces to write (a body is its own piece,
    never copied into a bigger buffer). `info`/`raw` as `plan()` asked for them, `binaries`
    the decoded BINARY sections (`_binary.decode_chunk`), `preview` the PREVIEW text, `ids` the
    store's OBJECTIDs (for EMAILID), `max_header_bytes` the header bound (`sections`)."""
    pieces = []
    tree = None   # the part tree, built once per message from the cached table
    text = [b"* %d FETCH (" % seq]
    for n, item in enumerate(items):
        if n:
            text.append(b" ")
        name = item.name
        if name == b"UID":
            text.append(b"UID %d" % meta.uid)
        elif name == b"FLAGS":
            text.append(b"FLAGS " + flag_list(flags))
        elif name == b"MODSEQ":
            text.append(b"MODSEQ (%d)" % meta.modseq)
        elif name == b"INTERNALDATE":
            text.append(b"INTERNALDATE " + format_date_time(meta.internaldate))
        elif name == b"SAVEDATE":   # RFC 8514 4.2 (NIL: no save date known); server's zone, as Dovecot
            saved = meta.saved
            text.append(b"SAVEDATE " + (format_date_time(saved.astimezone()) if saved else b"NIL"))
        elif name == b"EMAILID":    # RFC 8474 5.1
            assert ids is not None
            text.append(b"EMAILID (" + ids.email(meta.body_id) + b")")
        elif name == b"THREADID":   # RFC 8474 5.2: NIL, no thread ids kept
            text.append(b"THREADID NIL")
        elif name == b"RFC822.SIZE":
            text.append(b"RFC822.SIZE %d" % info.size)
        elif name == b"ENVELOPE":
            text.append(b"ENVELOPE " + info.envelope)
        elif name == b"BODY":
            text.append(b"BODY " + info.body)
        elif name == b"BODYSTRUCTURE":
            text.append(b"BODYSTRUCTURE " + info.bodystructure)
        elif name == b"PREVIEW":
            text.append(b"PREVIEW " + nstring((preview or "").encode("utf-8")))
        elif item.binary:
            decoded = binaries[(item.section, name == b"BINARY.SIZE")]
            if isinstance(decoded, BinaryError):   # RFC 3516 4.3: NO [UNKNOWN-CTE]
                raise Reply.no(str(decoded), decoded.code)
            if name == b"BINARY.SIZE":
                text.append(b"BINARY.SIZE[%s] %d" % (item.section, len(decoded.data)))
                continue
            data, section = decoded.data, item.section or b""
            origin = b""
            if item.partial:
                data = data[item.partial[0]:item.partial[0] + item.partial[1]]
                origin = b"<%d>" % item.partial[0]
            marker = b"~{%d}\r\n" if decoded.literal8 else b"{%d}\r\n"
            text.append(b"BINARY[" + section + b"]" + origin + b" " + marker % len(data))
            pieces += [b"".join(text), data]
            text = []
        else:
            if _whole(item):   # known clean (size == virtual size, no NUL): sent as stored
                clean = info is not None and info.size == len(raw) and b"\0" not in raw
                data = raw if clean else crlf(raw)
            elif item.section is None:   # RFC822.HEADER, RFC822.TEXT
                tree = tree or table_to_parts(info.parts)
                data = fetch_section(raw, name, parts=tree)
            else:
                tree = tree or table_to_parts(info.parts)
                try:
                    data = fetch_section(raw, item.section, item.partial, parts=tree,
                                         max_header_bytes=max_header_bytes)
                except SectionError as exc:
                    raise Reply.bad(f"Invalid section: {exc}") from None
            if item.section is None:
                label = name
            else:
                origin = b"<%d>" % item.partial[0] if item.partial else b""
                label = b"BODY[" + item.section + b"]" + origin
            text.append(label + b" {%d}\r\n" % len(data))
            pieces.append(b"".join(text))
            pieces.append(data)
            text = []
    text.append(b")\r\n")
    pieces.append(b"".join(text))
    return pieces
