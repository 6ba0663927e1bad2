"""SEARCH keys (RFC 3501 §6.4.4): parse the tokenised arguments, evaluate per message.

`parse_search(args)` takes the arguments after ``SEARCH`` as the IMAP parser gives them
(atoms as `Atom`, quoted strings and literals as other bytes, parenthesised lists as tuples) and
returns one `SearchKey` tree; `matches(key, msg)` evaluates it against a message view. A search
key must be an atom (RFC 3501 9, search-key): a string where a key belongs is BAD, as in
Dovecot; the keys' arguments may be atoms or strings.

Text keys compare case-insensitively against *decoded* text, both sides mapped with RFC 5051
i;unicode-casemap (`basesubject.casemap`: simple titlecase, then NFKD), as Dovecot does; not
Unicode full case folding, which would make "ß" match "ss" (RFC 5051 keeps "ß"). Using the
stdlib `email` package: header values with RFC 2047 words decoded, bodies with their
Content-Transfer-Encoding removed and their charset decoded. BODY looks at the text of every
text part (message/rfc822 parts included), TEXT at the headers as well.

The message view needs ``seq``, ``uid``, ``flags`` (iterable of str or bytes, e.g.
``"\\Seen"``), ``internaldate`` (an aware or naive `datetime`), ``size`` and ``raw``;
optionally ``last_seq`` / ``last_uid`` (what ``*`` means; otherwise pass them to
`matches`), ``saved`` (SAVEDATE, RFC 8514: an aware `datetime` or None, then the internal date
stands in, 4.3) and ``emailid`` (OBJECTID, RFC 8474: bytes).
"""

from __future__ import annotations

import datetime
import email
import email.errors
import email.parser
import email.policy
import email.utils
import re
import time
from dataclasses import dataclass
from functools import cached_property

from proxy.gateway import header_block
from proxy.gateway._parts import DEFAULT_LIMITS
from proxy.gateway.address_text import contains
from proxy.gateway.basesubject import casemap
from proxy.gateway.numbers import MODSEQ_MAX, NUMBER_MAX, InvalidNumber, number, sequence_set
from proxy.gateway.search_text import bounded_casemap, decode_header, header_items, text_blobs
from proxy.imap import Atom

__all__ = ["SearchKey", "SearchError", "parse_search", "matches", "key_ops"]

CHARSETS = ("UTF-8", "US-ASCII")
MAX_DEPTH = 100   # nesting of NOT, OR and parentheses; deeper answers BAD (no recursion past it)
_EPOCH = datetime.date(1970, 1, 1)
_TIME_GLUED_TO_ZONE = re.compile(r"\d:\d\d(?::\d\d)?[+-]\d")
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "RECENT": ("\\Recent", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False),
}
_REV1_ONLY = ("NEW", "OLD", "RECENT")   # \Recent's keys, gone from RFC 9051's search-key
_HEADER_KEYS = ("BCC", "CC", "FROM", "SUBJECT", "TO")
_ADDRESS_HEADERS = ("bcc", "cc", "from", "to", "sender", "reply-to")
_DATE_KEYS = ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
              "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE")   # SAVED*: RFC 8514 4.3


class SearchError(Exception):
    """A SEARCH the server answers with BAD (or NO for BADCHARSET): `text` for the client,
    `code` the response code without brackets (e.g. ``"BADCHARSET (UTF-8 US-ASCII)"``)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text, self.code = text, code


@dataclass(frozen=True, slots=True)
class SearchKey:
    """One node: `op` is a key name ("AND", "OR", "NOT", "SEQSET", "UID", "FLAG", "HEADER",
    "BODY", "TEXT", "LARGER", "SMALLER", date keys, "ALL"); `args` its operands."""

    op: str
    args: tuple = ()


def key_ops(key: SearchKey) -> set[str]:
    """Every `op` in the tree (what a search needs: bodies, headers, flags...)."""
    found = {key.op}
    for arg in key.args:
        if isinstance(arg, SearchKey):
            found |= key_ops(arg)
    return found


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

def parse_search(args: list, *, rev2: bool = False) -> SearchKey:
    """The AND of all keys in `args`, with an optional leading ``CHARSET name``; with `rev2`
    (an IMAP4rev2 session) NEW, OLD and RECENT are unknown keys.

    Raises:
        SearchError: unknown key, missing or malformed argument, unsupported charset
            (code ``BADCHARSET (UTF-8 US-ASCII)``).
    """
    items = list(args)
    if items and _is_atom(items[0]) and _word(items[0]) == "CHARSET":
        if len(items) < 2 or isinstance(items[1], tuple):
            raise SearchError("CHARSET needs a charset name")
        charset = bytes(items[1]).decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise SearchError(f"Unsupported charset {charset}",
                              code="BADCHARSET (" + " ".join(CHARSETS) + ")")
        items = items[2:]
    if not items:
        raise SearchError("Missing search key")
    stream = _Tokens(items, rev2)
    keys = []
    while not stream.done():
        keys.append(_parse_key(stream, 0))
    return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


class _Tokens:
    def __init__(self, items: list, rev2: bool) -> None:
        self.items, self.pos, self.rev2 = items, 0, rev2

    def done(self) -> bool:
        return self.pos >= len(self.items)

    def next(self, what: str):
        if self.done():
            raise SearchError(f"Missing argument: {what}")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def string(self, what: str) -> str:
        item = self.next(what)
        if isinstance(item, tuple):
            raise SearchError(f"Expected a string for {what}")
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            raise SearchError(f"Invalid UTF-8 in {what}") from None

    def number(self, what: str, maximum: int = NUMBER_MAX) -> int:
        try:
            return number(self.string(what), maximum=maximum)
        except InvalidNumber as exc:
            raise SearchError(f"{what}: {exc}") from None


def _is_atom(item) -> bool:
    return isinstance(item, Atom)


def _word(item) -> str:
    if isinstance(item, tuple):   # e.g. UID (ALL): a list where an atom belongs
        raise SearchError("Expected an atom, not a list")
    return bytes(item).decode("ascii", "replace").upper()


def _parse_key(stream: _Tokens, depth: int) -> SearchKey:
    if depth >= MAX_DEPTH:   # NOT/OR/(...) nest; the tree is parsed and evaluated recursively
        raise SearchError(f"Search keys nested more than {MAX_DEPTH} deep")
    item = stream.next("search key")
    if isinstance(item, tuple):
        if not item:
            raise SearchError("Empty search group")
        sub = _Tokens(list(item), stream.rev2)
        keys = []
        while not sub.done():
            keys.append(_parse_key(sub, depth + 1))
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if not _is_atom(item):   # RFC 3501 9: search-key is an atom, never a string (Dovecot: BAD)
        raise SearchError("Expected a search key, not a string")
    word = _word(item)
    if stream.rev2 and word in _REV1_ONLY:   # RFC 9051 6.4.4, E: no \Recent, so no such keys
        raise SearchError(f"Unknown search key {word} (not in IMAP4rev2)")
    if word[:1].isdigit() or word[:1] == "*":
        return SearchKey("SEQSET", (_seqset(word),))
    if word == "ALL":
        return SearchKey("ALL")
    if word in _FLAG_KEYS:
        return SearchKey("FLAG", _FLAG_KEYS[word])
    if word == "NEW":
        return SearchKey("AND", (SearchKey("FLAG", ("\\Recent", True)), SearchKey("FLAG", ("\\Seen", False))))
    if word == "OLD":
        return SearchKey("FLAG", ("\\Recent", False))
    if word in ("KEYWORD", "UNKEYWORD"):
        return SearchKey("FLAG", (stream.string("keyword"), word == "KEYWORD"))
    if word == "NOT":
        return SearchKey("NOT", (_parse_key(stream, depth + 1),))
    if word == "OR":
        return SearchKey("OR", (_parse_key(stream, depth + 1), _parse_key(stream, depth + 1)))
    if word == "UID":
        return SearchKey("UID", (_seqset(_word(stream.next("UID set"))),))
    if word in ("LARGER", "SMALLER"):
        return SearchKey(word, (stream.number(word),))
    if word in _DATE_KEYS:
        return SearchKey(word, (_date(stream.string(word)),))
    if word in _HEADER_KEYS:
        return SearchKey("HEADER", (word.lower(), casemap(stream.string(word))))
    if word == "HEADER":
        name = stream.string("header name")
        return SearchKey("HEADER", (name.lower(), casemap(stream.string("header value"))))
    if word in ("BODY", "TEXT"):
        return SearchKey(word, (casemap(stream.string(word)),))
    if word == "SAVEDATESUPPORTED":   # RFC 8514 4.3: every mailbox keeps save dates
        return SearchKey("ALL")
    if word in ("EMAILID", "THREADID"):   # RFC 8474 6: THREADID is always NIL here
        return SearchKey(word, (stream.string(word).encode(),))   # case-sensitive (8474 7)
    if word in ("OLDER", "YOUNGER"):   # RFC 5032 WITHIN: an interval in seconds
        return SearchKey(word, (stream.number(word),))
    if word == "MODSEQ":   # RFC 7162 3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        value = _word(stream.next("MODSEQ value"))
        if not value.isdigit():   # the optional entry name (a quoted string) and its type
            _word(stream.next("MODSEQ entry type"))
            value = _word(stream.next("MODSEQ value"))
        try:
            return SearchKey("MODSEQ", (number(value, maximum=MODSEQ_MAX),))
        except InvalidNumber:
            raise SearchError("MODSEQ expects a number") from None
    raise SearchError(f"Unknown search key {word}")


def _seqset(text: str) -> tuple:
    try:
        return tuple(sequence_set(text))
    except InvalidNumber as exc:
        raise SearchError(f"Invalid sequence set: {exc}") from None


def _date(text: str) -> datetime.date:
    try:
        day, month, year = text.split("-")
        return datetime.date(int(year), _MONTHS[month.upper()], int(day))
    except (ValueError, KeyError):
        raise SearchError(f"Invalid date {text}") from None


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------

def matches(key: SearchKey, msg, *, last_seq: int | None = None, last_uid: int | None = None) -> bool:
    """Does `msg` satisfy `key`? `last_seq`/`last_uid` give ``*`` its value (default: the
    view's ``last_seq``/``last_uid``, else the message's own number)."""
    ctx = _Context(msg, last_seq, last_uid)
    return ctx.eval(key)


_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


class _Context:
    def __init__(self, msg, last_seq: int | None, last_uid: int | None) -> None:
        self.msg = msg
        self.last_seq = last_seq or getattr(msg, "last_seq", None) or msg.seq
        self.last_uid = last_uid or getattr(msg, "last_uid", None) or msg.uid

    def eval(self, key: SearchKey) -> bool:
        return _EVAL[key.op](self, *key.args)

    @cached_property
    def flags(self) -> set[str]:
        return {(f.decode() if isinstance(f, bytes) else f).lower() for f in self.msg.flags}

    @cached_property
    def message(self) -> email.message.Message:
        """The top-level header only: a flat parse, whatever the MIME structure below. A header
        longer than `max_header_bytes` (MimeLimits) is read as Dovecot reads it under that bound
        (`header_block`: fields past it empty, as Dovecot searches them), not handed whole to
        `email`."""
        raw = self.msg.raw
        limit = getattr(self.msg, "max_header_bytes", None) or DEFAULT_LIMITS.max_header_bytes
        end = min((e + len(blank) for blank in (b"\r\n\r\n", b"\n\n")
                   if (e := raw.find(blank, 0, limit)) >= 0), default=-1)
        if end >= 0 or len(raw) <= limit:
            return _HEADER_PARSER.parsebytes(raw[:end] if end >= 0 else raw)
        message = email.message.Message()
        for name, value in header_block.fields(raw, limit):
            message[name.decode("ascii", "surrogateescape")] = value.decode("ascii", "surrogateescape")
        return message

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        return [(name.lower(), decode_header(value)) for name, value in header_items(self.message)]

    @cached_property
    def raw_headers(self) -> list[tuple[str, str]]:
        return [(name.lower(), value) for name, value in header_items(self.message)]

    @cached_property
    def body_text(self) -> str:
        texts = getattr(self.msg, "texts", None)   # cached at ingest/APPEND (see text_blobs)
        if texts is not None:
            return texts[1]
        return self._texts[1]

    @cached_property
    def header_text(self) -> str:
        """Decoded headers of the message and of every part in it (TEXT sees them all)."""
        texts = getattr(self.msg, "texts", None)
        if texts is not None:
            return texts[0]
        return self._texts[0]

    @cached_property
    def _texts(self) -> tuple[str, str]:
        return text_blobs(self.msg.raw)

    def sent_date(self) -> datetime.date | None:
        """The Date: header's calendar date in its own zone. Like Dovecot, a missing or
        unparsable Date: counts as 1970-01-01."""
        value = self.message.get("Date")
        if value is None or _TIME_GLUED_TO_ZONE.search(str(value)):
            return _EPOCH  # Dovecot's date parser wants a space before the zone
        parsed = email.utils.parsedate_tz(str(value))
        try:
            return datetime.date(*parsed[:3]) if parsed else _EPOCH
        except ValueError:
            return _EPOCH


def _in_set(ranges: tuple, number: int, last: int) -> bool:
    for low, high in ranges:
        low = last if low is None else low
        high = last if high is None else high
        if min(low, high) <= number <= max(low, high):
            return True
    return False


# How long a header value's case mapping may get, in characters per character of the value:
# more than any script's letters (Hangul syllables map to 3), less than U+FDFA's 18, so a
# Subject of 10 MiB (the header bound) of U+FDFA is not mapped to 60 million characters on
# every SEARCH SUBJECT of it (search_text.py cuts the stored texts likewise)
HEADER_MAPPED_PER_CHAR = 4


def _eval_header(ctx: _Context, name: str, needle: str) -> bool:
    if name in _ADDRESS_HEADERS:
        return any(n == name and contains(v, needle) for n, v in ctx.raw_headers)
    return any(n == name and needle in bounded_casemap(v, HEADER_MAPPED_PER_CHAR * len(v) + 1024)
               for n, v in ctx.headers)


def _eval_date(op: str):
    def check(ctx: _Context, day: datetime.date) -> bool:
        if op.startswith("SENT"):
            got, op_ = ctx.sent_date(), op[4:]
            if got is None:
                return False
        elif op.startswith("SAVED"):
            # RFC 8514 4.3 "disregarding time and timezone": the day in the server's zone, as
            # Dovecot (a save date has no zone of its own; the internal date keeps its own)
            saved = getattr(ctx.msg, "saved", None) or ctx.msg.internaldate
            got, op_ = saved.astimezone().date(), op[5:]
        else:
            got, op_ = ctx.msg.internaldate.date(), op
        return {"BEFORE": got < day, "ON": got == day, "SINCE": got >= day}[op_]
    return check


_EVAL = {
    "ALL": lambda ctx: True,
    "AND": lambda ctx, *keys: all(ctx.eval(k) for k in keys),
    "OR": lambda ctx, a, b: ctx.eval(a) or ctx.eval(b),
    "NOT": lambda ctx, a: not ctx.eval(a),
    "SEQSET": lambda ctx, ranges: _in_set(ranges, ctx.msg.seq, ctx.last_seq),
    "UID": lambda ctx, ranges: _in_set(ranges, ctx.msg.uid, ctx.last_uid),
    "FLAG": lambda ctx, flag, present: (flag.lower() in ctx.flags) == present,
    "LARGER": lambda ctx, n: ctx.msg.size > n,
    "MODSEQ": lambda ctx, n: getattr(ctx.msg, "modseq", 0) >= n,
    # RFC 5032 3: INTERNALDATE at least / less than n seconds ago (whole seconds, as Dovecot)
    "OLDER": lambda ctx, n: ctx.msg.internaldate.timestamp() <= int(time.time()) - n,
    "YOUNGER": lambda ctx, n: ctx.msg.internaldate.timestamp() >= int(time.time()) - n,
    "SMALLER": lambda ctx, n: ctx.msg.size < n,
    "EMAILID": lambda ctx, value: getattr(ctx.msg, "emailid", None) == value,
    "THREADID": lambda ctx, value: False,
    "HEADER": _eval_header,
    "BODY": lambda ctx, needle: needle in ctx.body_text,
    "TEXT": lambda ctx, needle: needle in ctx.header_text or needle in ctx.body_text,
    **{op: _eval_date(op) for op in _DATE_KEYS},
}
