"""What the gateway's fetcher reads from a POP3 upstream besides bodies: the UIDL and LIST scan
listings (RFC 1939 5, 7), checked line by line, and a message's arrival time (INTERNALDATE)."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from typing import Any, Callable, TypeVar

from .. import logs
from ..session.failures import Failure
from ..session.upstream import UpstreamError
from . import header_block
from ._parts import DEFAULT_LIMITS
from .workers import Workers

__all__ = ["internaldate", "parse_uidl_listing", "parse_list_listing", "parsed"]

LISTING_IN_THREAD = 64 * 1024   # UIDL/LIST listings longer than this are parsed off the loop
# A message number longer than this is a malformed line (Python's int() refuses strings of
# more than 4,300 digits with a ValueError, which is no protocol failure)
MAX_NUMBER_DIGITS = 10


def _parse_date(value: Any) -> dt.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when if 1971 <= when.year <= 2100 else None


def internaldate(body: bytes, max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes) -> dt.datetime:
    """When the message arrived: the date of the topmost (last added) Received: header, else
    the first Date:, else now; the header read as Dovecot reads it under the header bound
    (`header_block`: a field past `max_header_bytes` of values is empty)."""
    received: bytes | None = None
    date: bytes | None = None
    for name, value in header_block.fields(body, max_header_bytes):
        key = name.lower()
        if key == b"received" and received is None:
            received = value
        elif key == b"date" and date is None:
            date = value
    if received is not None:
        _, sep, when_text = received.rpartition(b";")
        when = _parse_date(when_text.decode("latin-1")) if sep else None
        if when is not None:
            return when   # only the newest hop counts
    when = _parse_date(date.decode("latin-1")) if date is not None else None
    return when or dt.datetime.now(dt.timezone.utc)


# RFC 1939 7: "msg uid", the unique-id is 1 to 70 characters in the range 0x21 to 0x7E
_UIDL_LINE = re.compile(rb"([0-9]{1,%d}) ([\x21-\x7e]{1,70})" % MAX_NUMBER_DIGITS)
_NUMBERED_LINE = re.compile(rb"([0-9]{1,%d}) (.*)" % MAX_NUMBER_DIGITS, re.DOTALL)


def parse_uidl_listing(listing: bytes) -> list[tuple[int, str | None]]:
    """RFC 1939 7 UIDL scan listing -> [(message number, uidl)], in listing order. One regex
    match per line (a listing of 10,000 messages: ~5 ms; the fetcher parses big ones in a
    worker thread).

    A message whose unique-id breaks RFC 1939 7 (longer than 70 characters, a byte outside
    0x21-0x7E) or is shared with another message has None: the fetcher keys it by its content's
    digest, as for a server without UIDL, so it is neither lost nor stored twice, and one such
    message does not stop the account's sync for ever. Every message sharing a unique-id, the
    first one too: the server may list them in another order next time, and the one keyed by
    the unique-id would then be another message, the first one fetched (by digest) again and
    stored twice. A line without a message number cannot name a message: UpstreamError
    (PROTOCOL). A message number listed again is ignored (its message would be fetched twice)."""
    out: list[tuple[int, str | None]] = []
    seen: set[str] = set()
    shared: set[str] = set()
    numbers: set[int] = set()
    for line in listing.split(b"\r\n"):
        if not line:
            continue
        match = _UIDL_LINE.fullmatch(line) or _NUMBERED_LINE.fullmatch(line)
        if match is None:
            raise UpstreamError(Failure.PROTOCOL, f"malformed UIDL line {logs.sanitize(line, 80)!r}")
        number = int(match[1])
        if number in numbers:
            continue
        numbers.add(number)
        uidl = match[2].decode("ascii") if match.re is _UIDL_LINE else None
        if uidl in seen:
            shared.add(uidl)
        elif uidl is not None:
            seen.add(uidl)
        out.append((number, uidl))
    if shared:
        return [(number, None if uidl in shared else uidl) for number, uidl in out]
    return out


def parse_list_listing(listing: bytes) -> list[int]:
    """RFC 1939 5 LIST scan listing -> message numbers."""
    numbers = []
    for line in listing.split(b"\r\n"):
        parts = line.split(b" ")
        if line and (len(parts) < 2 or not parts[0].isdigit()
                     or len(parts[0]) > MAX_NUMBER_DIGITS):
            raise UpstreamError(Failure.PROTOCOL, f"malformed LIST line {logs.sanitize(line, 80)!r}")
        if line:
            numbers.append(int(parts[0]))
    return numbers


T = TypeVar("T")


async def parsed(parse: Callable[[bytes], T], listing: bytes, workers: Workers) -> T:
    """`parse(listing)`; a listing of many messages (~2,000 and more) is parsed in a worker
    thread (`workers.ingest`): one account's 100,000-message mailbox must not hold the event
    loop (DESIGN.md)."""
    if len(listing) > LISTING_IN_THREAD:
        return await workers.ingested(parse, listing)
    return parse(listing)
