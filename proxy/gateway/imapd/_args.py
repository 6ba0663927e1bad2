"""Command arguments as the server needs them: sequence sets, flags, dates, mailbox names, and
the `Reply` exception that handlers raise to finish a command with NO or BAD.

The sans-IO parser (`proxy.imap`) hands us `Atom(bytes)` for atoms, `bytes` for quoted strings
and literals, and `tuple` for parenthesised lists; everything here validates those shapes and
raises `Reply.bad(...)` (RFC 3501 7.1.3: BAD = the command was not understood).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TypeGuard

from ...store.base import SYSTEM_FLAGS
from .. import numbers
from . import _names

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 3501 9: flag-keyword = atom; here without the atom-specials and "]".
_KEYWORD = re.compile(rb"^[\x21\x23\x24\x26\x27\x2b-\x5a\x5e-\x7a\x7c\x7e]+$")
_DATE_TIME = re.compile(rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
_SYSTEM = {flag.lower(): flag for flag in SYSTEM_FLAGS}


class Reply(Exception):
    """Finish the current command with a tagged NO or BAD (or a non-default OK)."""

    def __init__(self, status: bytes, text: str, code: bytes | None = None):
        super().__init__(text)
        self.status, self.text, self.code = status, text, code

    @classmethod
    def no(cls, text: str, code: bytes | None = None) -> Reply:
        return cls(b"NO", text, code)

    @classmethod
    def bad(cls, text: str, code: bytes | None = None) -> Reply:
        return cls(b"BAD", text, code)


def is_atom(value: object) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and type(value) is not bytes


def word(value: object) -> bytes:
    """An atom argument, upper-cased; BAD for strings and lists."""
    if not is_atom(value):
        raise Reply.bad("Expected an atom")
    return bytes(value).upper()


def astring(value: object) -> bytes:
    """An atom or string argument (RFC 3501 9 astring); BAD for a list."""
    if not isinstance(value, bytes):
        raise Reply.bad("Expected a string")
    return bytes(value)


def mailbox(value: object, utf8: bool = False) -> str:
    """A mailbox argument decoded from modified UTF-7, or UTF-8 once enabled (`_names`);
    INBOX in any case is INBOX (5.1)."""
    raw = astring(value)
    try:
        name = _names.decode(raw, utf8)
    except _names.BadName as exc:
        raise Reply.no(f"Invalid mailbox name: {exc}") from None
    return "INBOX" if name.upper() == "INBOX" else name


def mailbox_wire(name: str, utf8: bool = False) -> bytes:
    return _names.wire(name, utf8)


# ---- sequence sets (RFC 3501 9: sequence-set) -------------------------------------------------

def parse_sequence_set(value: object, max_ranges: int = numbers.MAX_SET_RANGES,
                       ) -> list[tuple[int | None, int | None]]:
    """"1:3,5,7:*" -> its distinct ranges, merged (`numbers.sequence_set`); None stands for "*".
    BAD when malformed, for 0 or numbers past 4294967295, or past `max_ranges` ranges."""
    text = bytes(value) if is_atom(value) or isinstance(value, bytes) else b""
    try:
        return numbers.sequence_set(text, max_ranges)
    except numbers.InvalidNumber as exc:
        raise Reply.bad(str(exc)) from None


def parse_number(value: object, what: str, maximum: int = numbers.NUMBER_MAX) -> int:
    """A number argument in its RFC range; BAD otherwise (never a 5,000-digit int)."""
    text = bytes(value) if isinstance(value, bytes) else b""
    try:
        return numbers.number(text, maximum=maximum)
    except numbers.InvalidNumber as exc:
        raise Reply.bad(f"{what}: {exc}") from None


def resolve(ranges: list[tuple[int | None, int | None]], last: int) -> list[tuple[int, int]]:
    """Ranges with "*" replaced by `last`, each ordered low-high (RFC 3501 9: 4:2 == 2:4),
    overlapping ones merged: as many as the set has distinct ranges, whatever `last` is."""
    out = []
    for lo, hi in ranges:
        a = last if lo is None else lo
        b = last if hi is None else hi
        out.append((min(a, b), max(a, b)))
    return numbers.merge(out)


def compress(numbers: list[int]) -> bytes:
    """Numbers -> "1:3,5" (RFC 4731 ESEARCH ALL, RFC 4315 COPYUID), their order kept: only
    ascending runs become ranges (RFC 5267 3.2, 4.3.3: ESORT and ADDTO sets in sort order)."""
    parts: list[bytes] = []
    start: int | None = None
    prev = 0
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = n
    if start is not None:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)


def uid_list(numbers: list[int]) -> bytes:
    """Numbers in the given order, ranges only where consecutive (COPYUID needs order kept)."""
    return compress(numbers) if numbers == sorted(numbers) else b",".join(b"%d" % n for n in numbers)


# ---- flags --------------------------------------------------------------------------------------

def parse_flags(values: object, *, allow_recent: bool = False) -> list[str]:
    """A flag list (or a bare flag) -> canonical str flags. BAD for unknown \\flags (2.3.2)."""
    items = values if isinstance(values, tuple) else (values,)
    out = []
    for item in items:
        if not is_atom(item):
            raise Reply.bad("Flags must be atoms")
        raw = bytes(item)
        if raw.startswith(b"\\"):
            lowered = raw.decode("ascii", "replace").lower()
            if lowered == "\\recent" and allow_recent:
                continue
            if lowered not in _SYSTEM:
                raise Reply.bad(f"Invalid system flag {raw.decode('ascii', 'replace')}")
            out.append(_SYSTEM[lowered])
        elif _KEYWORD.match(raw):
            out.append(raw.decode("ascii"))
        else:
            raise Reply.bad("Invalid keyword")
    return out


FLAG_LIST_CACHE = 4096   # rendered flag sets kept (cleared when full: keywords are the client's)
_flag_lists: dict[frozenset[str], bytes] = {}


def flag_list(flags) -> bytes:
    """`(\\Seen kw ...)`, sorted. A frozenset's rendering is cached: every session told of one
    flag change renders the same set (the IDLE fan-out)."""
    if not isinstance(flags, frozenset):
        return b"(" + b" ".join(sorted(f.encode() for f in flags)) + b")"
    rendered = _flag_lists.get(flags)
    if rendered is None:
        if len(_flag_lists) >= FLAG_LIST_CACHE:
            _flag_lists.clear()
        rendered = _flag_lists[flags] = b"(" + b" ".join(sorted(f.encode() for f in flags)) + b")"
    return rendered


# ---- dates --------------------------------------------------------------------------------------

def parse_date_time(value: bytes) -> dt.datetime:
    """APPEND date-time "dd-Mon-yyyy hh:mm:ss +zzzz" (RFC 3501 9)."""
    match = _DATE_TIME.match(bytes(value))
    if not match:
        raise Reply.bad("Invalid date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = match.groups()
    try:
        month = [m.lower() for m in _MONTHS].index(mon.decode().lower()) + 1
        offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == b"-" else 1)
        return dt.datetime(int(year), month, int(day), int(hh), int(mm), int(ss),
                           tzinfo=dt.timezone(offset))
    except ValueError:
        raise Reply.bad("Invalid date-time") from None


def format_date_time(when: dt.datetime) -> bytes:
    """INTERNALDATE as `"17-May-2024 10:30:00 +0200"` (quoted)."""
    offset = int((when.utcoffset() or dt.timedelta()).total_seconds() // 60)
    sign = "-" if offset < 0 else "+"
    offset = abs(offset)
    return ('"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        when.day, _MONTHS[when.month - 1], when.year, when.hour, when.minute, when.second,
        sign, offset // 60, offset % 60)).encode()
