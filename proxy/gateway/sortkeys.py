"""What SORT (RFC 5256, 5957) and THREAD (RFC 5256) need of one message, read from its header
once: base subject, first addresses, sent date, Message-ID and references.

They are computed once per body, at POP3 ingest and APPEND (or at the first SORT of a body stored
without them), and kept in the store as a small record (`encode`/`decode`, versioned so a change
of the extraction below is recomputed rather than read stale).

Values are read as Dovecot 2.3 reads them (the differential tests compare with it): the first
occurrence of each header; addresses through the same RFC 5322 parser as ENVELOPE; keys that
compare as strings already mapped with i;unicode-casemap; Message-IDs as message-id.c takes
them ("<" ... "@" ... ">", white space removed, anything else ignored).
"""

from __future__ import annotations

import email.utils
import json
import re
from dataclasses import dataclass

from . import header_block
from ._addresses import MAILBOX, Address, AddressParser
from ._parts import DEFAULT_LIMITS
from .basesubject import base_subject, casemap, decode_words

__all__ = ["SortFields", "extract", "message_ids", "encode", "decode", "extract_record",
           "written_by_newer", "RECORD_VERSION"]

# Bump when `extract` changes its output: stored records of another version are recomputed
# (2: fields read by header_block.py, a header past 10 MiB of bytes read as Dovecot reads it).
RECORD_VERSION = 2

_WANTED = (b"subject", b"from", b"to", b"cc", b"date", b"message-id", b"references",
           b"in-reply-to")
_TIME_GLUED_TO_ZONE = re.compile(r"\d:\d\d(?::\d\d)?[+-]\d")   # Dovecot refuses these dates
_WSP = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True, slots=True)
class SortFields:
    subject: str            # RFC 5256 base subject, case-mapped
    reply: bool             # the subject says reply or forward (THREAD=REFERENCES 5.B)
    from_: str              # addr-mailbox of the first address, case-mapped
    to: str
    cc: str
    display_from: str       # RFC 5957: display name, else addr-spec, case-mapped
    display_to: str
    sent: float | None      # Date: as a UTC timestamp; None when missing or unparsable
    message_id: str | None
    references: tuple[str, ...]   # References, or the first ID of In-Reply-To without them


def _headers(raw: bytes, max_header_bytes: int) -> dict[bytes, bytes]:
    """The first value of each wanted header, read as Dovecot reads it under the header bound
    (`header_block`: a field past `max_header_bytes` of values is empty)."""
    found: dict[bytes, bytes] = {}
    for name, value in header_block.fields(raw, max_header_bytes):
        key = name.lower()
        if key in _WANTED and key not in found:
            found[key] = value
    return found


def _first_address(value: bytes | None) -> Address | None:
    """The first address of a list, read once per field, and only that far: the rest of a
    hostile list (a From of 10 MiB of commas) is never parsed."""
    return None if value is None else AddressParser(value).first()


def _mailbox(addr: Address | None) -> str:
    mailbox = None if addr is None else addr[MAILBOX]
    return "" if mailbox is None else casemap(mailbox.decode("utf-8", "replace"))


def _display(addr: Address | None) -> str:
    """RFC 5957 2: the display name if there is one, else "mailbox@domain"."""
    if addr is None:
        return ""
    name, _, mailbox, domain = addr
    if name:
        words = decode_words(name)
        if words:
            return casemap(words)
    if mailbox is None:
        return ""
    spec = mailbox if domain is None else mailbox + b"@" + domain
    return casemap(spec.decode("utf-8", "replace"))   # a group: its name, as Dovecot


def _sent(value: bytes | None) -> float | None:
    if value is None:
        return None
    text = value.decode("latin-1")
    if _TIME_GLUED_TO_ZONE.search(text):
        return None
    try:
        parsed = email.utils.parsedate_tz(text)
        return float(email.utils.mktime_tz(parsed)) if parsed else None
    except (ValueError, OverflowError, TypeError):
        return None


def message_ids(value: bytes | None) -> list[str]:
    """Every "<id-left@id-right>" in a header value, white space removed."""
    if not value:
        return []
    out = []
    # each "<" to the next ">", left to right, as `<([^>]*)>` matches; by find, which stops
    # once no ">" follows: the regex scanned the rest of the value again from each "<" then
    # ("<" * 40,000 in References: 7 s of CPU per header at ingest)
    start = value.find(b"<")
    while start >= 0:
        end = value.find(b">", start + 1)
        if end < 0:
            break
        ident = _WSP.sub(b"", value[start + 1:end])
        if b"@" in ident and b"<" not in ident:
            out.append(ident.decode("utf-8", "replace"))
        start = value.find(b"<", end + 1)
    return out


def extract(raw: bytes, max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes) -> SortFields:
    """The sort and thread fields of a raw message."""
    h = _headers(raw, max_header_bytes)
    subject, reply = base_subject(h[b"subject"]) if b"subject" in h else ("", False)
    ids = message_ids(h.get(b"message-id"))
    refs = message_ids(h.get(b"references"))
    if not refs:   # RFC 5256 4 (1): In-Reply-To's first ID when there are no References
        refs = message_ids(h.get(b"in-reply-to"))[:1]
    from_, to = _first_address(h.get(b"from")), _first_address(h.get(b"to"))
    return SortFields(
        subject=subject, reply=reply,
        from_=_mailbox(from_), to=_mailbox(to), cc=_mailbox(_first_address(h.get(b"cc"))),
        display_from=_display(from_), display_to=_display(to),
        sent=_sent(h.get(b"date")), message_id=ids[0] if ids else None,
        references=tuple(refs))


def encode(fields: SortFields) -> bytes:
    """The stored record of `fields` (a JSON array led by `RECORD_VERSION`)."""
    return json.dumps([RECORD_VERSION, fields.subject, fields.reply, fields.from_, fields.to,
                       fields.cc, fields.display_from, fields.display_to, fields.sent,
                       fields.message_id, fields.references]).encode()


def decode(record: bytes | None) -> SortFields | None:
    """The fields of a stored record; None when absent, damaged or of another version."""
    if not record:
        return None
    try:
        value = json.loads(record)
        if not isinstance(value, list) or len(value) != 11 or value[0] != RECORD_VERSION:
            return None
        (_, subject, reply, from_, to, cc, display_from, display_to, sent, message_id,
         references) = value
        return SortFields(subject, bool(reply), from_, to, cc, display_from, display_to,
                          None if sent is None else float(sent), message_id, tuple(references))
    except (ValueError, TypeError):
        return None


def written_by_newer(record: bytes | None) -> bool:
    """Is `record` of a newer RECORD_VERSION (a newer process on the same PostgreSQL store,
    during a rolling upgrade)? Then it is not replaced, so the two do not rewrite it in turn."""
    try:
        value = json.loads(record or b"null")
    except ValueError:
        return False
    return isinstance(value, list) and bool(value) and isinstance(value[0], int) \
        and value[0] > RECORD_VERSION


def extract_record(raw: bytes, max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes) -> bytes:
    """`encode(extract(raw))`: the record stored with a new body."""
    return encode(extract(raw, max_header_bytes))
