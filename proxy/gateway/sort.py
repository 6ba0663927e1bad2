"""SORT (RFC 5256 3) and SORT=DISPLAY (RFC 5957) over messages whose sort fields are known.

A sort program is a list of (key, reverse). Messages equal under every key keep mailbox order
(RFC 5256 3: sequence number as the final tie-breaker). The program is applied as stable sorts
from the last key to the first, so REVERSE turns one key around and nothing else. String keys
are already case-mapped with i;unicode-casemap (sortkeys.py); comparing them by code point is
comparing their UTF-8 octets, as the collation says.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .sortkeys import SortFields

__all__ = ["Item", "SORT_KEYS", "sort_items", "sent_date"]


class Item(NamedTuple):   # a tuple: ten times cheaper to make than a frozen dataclass
    """One message: `number` is what is answered (sequence number or UID), `seq` its place in
    the mailbox, `arrival` its INTERNALDATE as a UTC timestamp, `size` its RFC822.SIZE."""

    number: int
    seq: int
    arrival: float
    size: int
    fields: SortFields


def sent_date(item: Item) -> float:
    """RFC 5256 2.2: the Date: header, or INTERNALDATE when it is missing or unparsable."""
    sent = item.fields.sent
    return item.arrival if sent is None else sent


SORT_KEYS: dict[str, Callable[[Item], Any]] = {
    "ARRIVAL": lambda i: i.arrival,
    "CC": lambda i: i.fields.cc,
    "DATE": sent_date,
    "FROM": lambda i: i.fields.from_,
    "SIZE": lambda i: i.size,
    "SUBJECT": lambda i: i.fields.subject,
    "TO": lambda i: i.fields.to,
    "DISPLAYFROM": lambda i: i.fields.display_from,   # RFC 5957
    "DISPLAYTO": lambda i: i.fields.display_to,
}


def sort_items(items: list[Item], program: list[tuple[str, bool]]) -> list[Item]:
    """`items` ordered by the program; ties in sequence order."""
    out = sorted(items, key=lambda i: i.seq)
    for key, reverse in reversed(program):
        out.sort(key=SORT_KEYS[key], reverse=reverse)   # stable, also with reverse=True
    return out
