"""Numbers and sequence sets from IMAP clients, bounded (RFC 3501 9, RFC 7162 3.1.1).

A number outside its RFC range (a 5,000-digit one included) is rejected before Python turns
it into an int, and a sequence set is read into its *distinct* ranges, merged, with a cap on
how many there may be, so neither the text's length nor the mailbox's size multiplies memory:
``1:*,1:*,...`` sent as a 400 KB literal is one range.
"""

from __future__ import annotations

import re

__all__ = ["NUMBER_MAX", "MODSEQ_MAX", "MAX_SET_RANGES", "InvalidNumber", "number", "sequence_set",
           "merge"]

NUMBER_MAX = 4294967295        # RFC 3501 9: number, nz-number (32-bit unsigned)
MODSEQ_MAX = 2 ** 63 - 1       # RFC 7162 3.1.1: mod-sequence-value
MAX_SET_RANGES = 100_000       # distinct ranges in one sequence set (gateway.limits)

_ITEM = re.compile(rb"(\d+|\*)(?::(\d+|\*))?(?:,|\Z)")

Range = tuple[int | None, int | None]   # None stands for "*"


class InvalidNumber(ValueError):
    """Not a number in its RFC range, or not a valid (or too big a) sequence set."""


def number(text: bytes | str, *, maximum: int = NUMBER_MAX, nonzero: bool = False) -> int:
    """Digits only, at most `maximum` (and not 0 when `nonzero`)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not raw.isdigit() or not raw.isascii():
        raise InvalidNumber("Expected a number")
    value = int(raw) if len(raw) <= len(str(maximum)) else maximum + 1   # never a huge int
    if value > maximum or (nonzero and value == 0):
        raise InvalidNumber(f"Number out of range (1 to {maximum})" if nonzero else
                            f"Number out of range (0 to {maximum})")
    return value


def sequence_set(text: bytes | str, max_ranges: int = MAX_SET_RANGES) -> list[Range]:
    """"1:3,5,7:*" -> distinct ranges, concrete ones merged: [(1, 3), (5, 5), (7, None)].
    Raises InvalidNumber for bad syntax, 0, numbers past NUMBER_MAX, or more than
    `max_ranges` distinct ranges (read one item at a time: no list of the text's pieces)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not raw or raw.endswith(b","):
        raise InvalidNumber("Invalid sequence set")
    seen: set[Range] = set()
    pos = 0
    while pos < len(raw):
        match = _ITEM.match(raw, pos)
        if match is None:
            raise InvalidNumber("Invalid sequence set")
        lo = _end(match.group(1))
        hi = _end(match.group(2)) if match.group(2) is not None else lo
        seen.add((lo, hi))
        if len(seen) > max_ranges:
            raise InvalidNumber(f"Sequence set has more than {max_ranges} ranges")
        pos = match.end()
    concrete = [(min(a, b), max(a, b)) for a, b in seen if a is not None and b is not None]
    starred = {a if a is not None else b for a, b in seen if a is None or b is None}  # n:*
    out: list[Range] = list(merge(concrete))
    out += [(low, None) for low in sorted(starred, key=lambda n: -1 if n is None else n)]
    return out


def _end(text: bytes) -> int | None:
    return None if text == b"*" else number(text, nonzero=True)


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ordered (low, high) ranges, overlapping or adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
