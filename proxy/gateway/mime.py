"""MIME structure of a stored message: ENVELOPE, BODY, BODYSTRUCTURE and part offsets.

Theory of operation
-------------------
IMAP clients compare what they see against what Dovecot shows them, so the goal here is
Dovecot 2.3's output byte for byte (RFC 3501 §7.4.2), computed once per message at ingest
or APPEND by `analyze()` and kept by the store as an opaque JSON blob (`from_cache()`).
Two jobs, two tools:

* **Decoding** (RFC 2047 encoded words, RFC 2231 parameters, quoted-printable/base64,
  charsets) uses the standard library's `email` package: it is well kept, handles the
  RFC 2047/2231 corner cases and the odd charsets of real mail, and is what `search.py`
  relies on for decoded matching.
* **Structure** (where each part's header and body start and end) is scanned on the raw
  bytes by `_parts.py`, following Dovecot's `message-parser.c` rules (see there); header
  values are tokenized by `_rfc822.py` (Dovecot's `rfc822-parser.c`), address lists read by
  `_addresses.py` (`message-address.c`).

This module writes the IMAP side: ENVELOPE (with its address lists), BODY/BODYSTRUCTURE
(their strings written by `imap_strings.py`, Dovecot's `imap-quote.c`) and the ingest-time
cache (`analyze()` / `from_cache()`).

One deliberate difference from Dovecot: an ENVELOPE address field lists at most
`MimeLimits.max_envelope_addresses` records (10,000; `gateway.limits.envelope_max_addresses`),
where Dovecot writes them all. Each record is ~44 bytes even for an empty address (one comma),
so a From of 1 MB of commas was a 132 MB ENVELOPE (From, Sender and Reply-To), and every
whole-string step of it (the join, the JSON of the stored analysis, its reading at FETCH) one C
call holding the GIL for tenths of a second per MB: a stall for every other session.

ENVELOPE and BODYSTRUCTURE strings are *not* decoded: IMAP requires the raw
(still RFC 2047-encoded) header text.  Sizes are "virtual" sizes, i.e. counted as if every
line ended in CRLF, as IMAP octet counts must be.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from ._addresses import Address, AddressParser
from ._parts import (  # noqa: F401 - Part, parse, TEXT, table_to_parts: used via mime.* elsewhere
    DEFAULT_LIMITS,
    MULTIPART,
    RFC822,
    TEXT,
    MimeLimits,
    Part,
    parse,
    part_table,
    rfc2231_params,
    table_to_parts,
)
from ._rfc822 import Rfc822
from .imap_strings import nstring, nstring_nolf, string_for_humans

__all__ = ["Part", "MimeLimits", "parse", "envelope", "bodystructure", "analyze", "from_cache",
           "MimeInfo"]

DEFAULT_CHARSET = b"us-ascii"
# Bump when analyze() changes its output, so stored caches are recomputed (2: an empty
# Sender/Reply-To defaults to From; 3: fields read by header_block.py, bounded by values as
# Dovecot does, so a header past 10 MiB of bytes or ~20,000 fields reads differently; 4: at
# most MimeLimits.max_envelope_addresses address records per ENVELOPE field).
CACHE_VERSION = 4


def _virtual(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(octets with every LF counted as CRLF, number of LFs) of raw[start:end]."""
    lines = raw.count(b"\n", start, end)   # in place: a slice would copy a 50 MB body
    bare = lines - raw.count(b"\r\n", start, end)
    return len(memoryview(raw)[start:end]) + bare, lines


# ---------------------------------------------------------------------------------------
# ENVELOPE
# ---------------------------------------------------------------------------------------

class EnvelopeReach:
    """The ENVELOPE bound of one analysis, and how far its address fields went against it.

    A field lists at most `MimeLimits.max_envelope_addresses` records (N), and all the fields
    of the analysis together, the message's ENVELOPE then those of its message/rfc822 parts in
    BODYSTRUCTURE order, at most `ENVELOPE_ADDRESS_FIELDS` x N (once a field of each part has
    its first record): per field alone, a 400 KB message of 40 message/rfc822 parts whose
    From is 10,000 commas was a 115 MB analysis (418 MB of peak memory, 1.3 s of CPU), each part
    writing 10,000 records three times (From, Sender, Reply-To) in BODYSTRUCTURE and in BODY.

    So that a stored analysis can tell whether another bound would write it differently
    (`fits`), it records `cut` when a field stopped at its limit (its list may go on past it),
    else `needs`, the least bound that writes every record it holds."""

    def __init__(self, limits: MimeLimits) -> None:
        self.field = limits.max_envelope_addresses
        self.left = ENVELOPE_ADDRESS_FIELDS * self.field
        self.most, self.spent, self.cut = 0, 0, False

    def limit(self) -> int:
        """Records the next field may list."""
        return max(1, min(self.field, self.left))

    def saw(self, records: int, limit: int) -> None:
        self.most = max(self.most, records)
        self.spent += records
        self.left -= records
        self.cut = self.cut or records >= limit   # the parser stopped there (_addresses.py)

    def needs(self) -> int:
        """The least N whose bounds this analysis's whole fields are within (a field's and the
        total), when nothing was cut."""
        return max(self.most, -(-self.spent // ENVELOPE_ADDRESS_FIELDS))

    @staticmethod
    def fits(needs: object, cut_at: object, limit: int) -> bool:
        """Does `limit` write the ENVELOPEs that these figures ("eneed", "ecut" of `analyze()`)
        describe? Cut ones only under their own bound; whole ones under any bound above
        what they need."""
        if cut_at is not None:
            return cut_at == limit
        return isinstance(needs, int) and needs < limit


ENVELOPE_ADDRESS_FIELDS = 6   # From, Sender, Reply-To, To, Cc, Bcc


def _address_list(values: list[bytes] | None, reach: EnvelopeReach) -> bytes:
    """RFC 3501 7.4.2 address list of the field's values (joined, as Dovecot joins repeated
    fields), at most `reach.limit()` records (and the end of a group the limit cut)."""
    limit = reach.limit()
    addrs: list[Address] = []
    for value in values or ():
        if len(addrs) >= limit:
            break
        addrs += AddressParser(value).parse(limit - len(addrs)) or []
    if values:
        reach.saw(len(addrs), limit)
    if not addrs:
        return b"NIL"
    items: list[bytes] = []
    written: dict[Address, bytes] = {}   # identical addresses (a list of commas: all of them) written once
    for a in addrs:
        item = written.get(a)
        if item is None:
            name, route, mailbox, domain = a
            name_ = b"NIL" if name is None else string_for_humans(name)
            item = written[a] = b"(%b %b %b %b)" % (name_, nstring(route), nstring(mailbox), nstring(domain))
        items.append(item)
    return b"(" + b"".join(items) + b")"


_ADDRESS_FIELDS = (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")
_ENVELOPE_FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
                    b"in-reply-to", b"message-id")


def _envelope_of(part: Part, reach: EnvelopeReach) -> bytes:
    addrs: dict[bytes, list[bytes]] = {}
    found: dict[bytes, bytes] = {}
    for name, value in part.headers:
        lname = name.lower()
        if lname in _ENVELOPE_FIELDS:
            found[lname] = value  # Dovecot keeps the last one
            if lname in _ADDRESS_FIELDS:
                addrs.setdefault(lname, []).append(value)  # ...but joins address lists
    if not found:
        return b"NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL"
    subject = found.get(b"subject")
    frm = _address_list(addrs.get(b"from"), reach)
    # RFC 3501 7.4.2: Sender and Reply-To, when absent or empty, are set to From.
    sender = _address_list(addrs.get(b"sender"), reach)
    reply_to = _address_list(addrs.get(b"reply-to"), reach)
    fields = [
        nstring_nolf(found.get(b"date")),
        b"NIL" if subject is None else string_for_humans(subject),
        frm,
        frm if sender == b"NIL" else sender,
        frm if reply_to == b"NIL" else reply_to,
        _address_list(addrs.get(b"to"), reach),
        _address_list(addrs.get(b"cc"), reach),
        _address_list(addrs.get(b"bcc"), reach),
        nstring_nolf(found.get(b"in-reply-to")),
        nstring_nolf(found.get(b"message-id")),
    ]
    return b" ".join(fields)


def envelope(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> bytes:
    """The ENVELOPE list of `raw`, parentheses included."""
    return b"(" + _envelope_of(parse(raw, limits), EnvelopeReach(limits)) + b")"


# ---------------------------------------------------------------------------------------
# BODY / BODYSTRUCTURE
# ---------------------------------------------------------------------------------------

@dataclass
class _PartData:
    ctype: bytes | None = None
    subtype: bytes | None = None
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    cte: bytes | None = None
    cid: bytes | None = None
    md5: bytes | None = None
    description: bytes | None = None
    disposition: bytes | None = None
    disposition_params: list[tuple[bytes, bytes]] = field(default_factory=list)
    language: list[bytes] | None = None
    location: bytes | None = None


def _part_data(part: Part) -> _PartData:
    data = _PartData()
    if not part.is_mime:
        return data
    for name, value in part.headers:
        lname = name.lower()
        if not lname.startswith(b"content-"):
            continue
        key = lname[8:]
        if key == b"type" and data.ctype is None:
            p = Rfc822(value)
            p.skip_lwsp()
            mtype, ok = p.content_type()
            data.ctype, slash, data.subtype = mtype.partition(b"/")
            if not slash:
                data.subtype = None
            if ok:
                data.params = rfc2231_params(p)
        elif key == b"transfer-encoding" and data.cte is None:
            p, out = Rfc822(value), bytearray()
            p.skip_lwsp()
            if p.mime_token(out) >= 0 and p.skip_lwsp() == 0 and out:
                data.cte = bytes(out)
        elif key == b"id" and data.cid is None:
            data.cid = value
        elif key == b"md5" and data.md5 is None:
            data.md5 = value
        elif key == b"description" and data.description is None:
            data.description = value
        elif key == b"location" and data.location is None:
            data.location = value
        elif key == b"language" and data.language is None:
            data.language = _languages(value)
        elif key == b"disposition" and not data.disposition_params:
            p, out = Rfc822(value), bytearray()
            p.skip_lwsp()
            if p.mime_token(out) >= 0:
                data.disposition = bytes(out)
                data.disposition_params = rfc2231_params(p)
    return data


def _languages(value: bytes) -> list[bytes] | None:
    p, langs = Rfc822(value), []
    p.skip_lwsp()
    while True:
        out = bytearray()
        if p.atom(out) < 0:
            break
        langs.append(bytes(out))
        if p.peek() != 0x2C:
            break
        p.pos += 1
        p.skip_lwsp()
    return langs or None


def _params(params: list[tuple[bytes, bytes]], default_charset: bool) -> bytes:
    if not params and not default_charset:
        return b"NIL"
    items = []
    for key, value in params:
        items += [nstring(key), nstring(value)]
    if default_charset and not any(k.lower() == b"charset" for k, _ in params):
        items += [b'"charset"', b'"' + DEFAULT_CHARSET + b'"']
    return b"(" + b" ".join(items) + b")"


def _common_ext(data: _PartData) -> list[bytes]:
    if data.disposition is None:
        disp = b"NIL"
    else:
        disp = b"(" + nstring(data.disposition) + b" " + _params(data.disposition_params, False) + b")"
    lang = b"NIL" if data.language is None else b"(" + b" ".join(map(nstring, data.language)) + b")"
    return [disp, lang, nstring_nolf(data.location)]


_EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'


def _write(raw: bytes, part: Part, extended: bool, limits: MimeLimits,
           reach: EnvelopeReach) -> bytes:
    data = _part_data(part)
    if part.kind == MULTIPART:
        if part.children:
            out = b"".join(b"(" + _write(raw, c, extended, limits, reach) + b")" for c in part.children)
        else:
            out = _EMPTY_BODY + (b" NIL NIL NIL NIL)" if extended else b")")
        out += b" " + nstring(data.subtype or b"")
        if extended:
            out += b" " + b" ".join([_params(data.params, False)] + _common_ext(data))
        return out
    if part.kind == RFC822:
        items, text = [b'"message" "rfc822"'], False
    elif part.opaque:   # nested past MimeLimits.max_depth: Dovecot's stand-in type
        items, text = [b'"application" "octet-stream"'], False
    elif data.ctype is None:
        items, text = [b'"text" "plain"'], True
    else:
        text = data.ctype.lower() == b"text"
        items = [nstring(data.ctype) + b" " + nstring(data.subtype if data.subtype is not None else b"")]
    size, lines = _virtual(raw, part.header_end, part.end)
    items += [_params(data.params, text), nstring_nolf(data.cid), nstring_nolf(data.description),
              nstring(data.cte) if data.cte is not None else b'"7bit"', b"%d" % size]
    if text:
        items.append(b"%d" % lines)
    elif part.kind == RFC822:
        child = part.children[0]
        items += [b"(" + _envelope_of(child, reach) + b")",
                  b"(" + _write(raw, child, extended, limits, reach) + b")", b"%d" % lines]
    if extended:
        items += [nstring_nolf(data.md5)] + _common_ext(data)
    return b" ".join(items)


def bodystructure(raw: bytes, extended: bool = True, limits: MimeLimits = DEFAULT_LIMITS) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not extended) of `raw`, parentheses included."""
    root, reach = parse(raw, limits), EnvelopeReach(limits)
    _envelope_of(root, reach)   # the message's own ENVELOPE comes first (EnvelopeReach)
    return b"(" + _write(raw, root, extended, limits, reach) + b")"


# ---------------------------------------------------------------------------------------
# The ingest-time cache
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MimeInfo:
    """What `analyze()` computed, as the IMAP server needs it."""

    envelope: bytes
    bodystructure: bytes
    body: bytes
    size: int
    parts: list  # part table, see `_parts.part_table()`


def analyze(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> dict:
    """Everything FETCH needs from the message text, computed once (at ingest or APPEND).

    Returns a JSON-serialisable dict; bytes are carried as latin-1 strings (lossless).
    """
    root = parse(raw, limits)
    reach = EnvelopeReach(limits)
    envelope = (b"(" + _envelope_of(root, reach) + b")").decode("latin-1")
    parts_reach = copy.copy(reach)   # BODY's parts draw on what BODYSTRUCTURE's did
    structure = (b"(" + _write(raw, root, True, limits, reach) + b")").decode("latin-1")
    return {
        "v": CACHE_VERSION,
        "envelope": envelope,
        "bodystructure": structure,
        "body": (b"(" + _write(raw, root, False, limits, parts_reach) + b")").decode("latin-1"),
        "size": _virtual(raw, 0, len(raw))[0],
        "parts": part_table(root),
        # what the ENVELOPE bound did here (EnvelopeReach.fits): the bound a field was cut at,
        # else the least bound that writes them whole
        "ecut": limits.max_envelope_addresses if reach.cut else None,
        "eneed": reach.needs(),
    }


def from_cache(blob: bytes | str | dict) -> MimeInfo:
    """Inverse of ``json.dumps(analyze(raw)).encode()``; also accepts the dict itself."""
    data = blob if isinstance(blob, dict) else json.loads(blob)
    if data.get("v") != CACHE_VERSION:
        raise ValueError(f"unsupported MIME cache version {data.get('v')!r}")
    return MimeInfo(
        envelope=data["envelope"].encode("latin-1"),
        bodystructure=data["bodystructure"].encode("latin-1"),
        body=data["body"].encode("latin-1"),
        size=data["size"],
        parts=data["parts"],
    )
