"""The text SEARCH FROM, TO, CC and BCC match against (RFC 3501 6.4.4), and a bounded cache of it.

Theory of operation
-------------------
Dovecot searches an address header as its parsed list written back (``message_address_write``):
``Name <box@domain>``, missing parts filled in as MISSING_MAILBOX / MISSING_DOMAIN, groups as
``name: ...;``. `address_text(value)` builds that from `_addresses.AddressParser` with the
display names' RFC 2047 words decoded. Its cost grows with the list (a From of 1 MB of commas
is a million addresses, ~1 s of Python), and a search reads the header of every message it
tests, so the case-mapped text is kept: `contains(value, needle)` looks it up by the header
value itself in one LRU shared by every session and worker thread, bounded by the memory it
holds (`ADDRESS_TEXT_BYTES`: each value's and text's `sys.getsizeof`, 1 to 4 bytes a character
plus a header, and `ENTRY_BYTES` for the entry itself; tests/gateway_mime/test_hostile_cost.py
checks the estimate with tracemalloc). A hostile list repeats one address (a From of
commas: MISSING_MAILBOX@MISSING_DOMAIN a million times, 32 characters each), so a run of
identical addresses is kept cut to `RUN_KEPT` of them, which answers every needle up to a
length the cut cannot change (`collapsed`); a longer needle reads the list again. A text still
bigger than a quarter of the cache is not kept: such a list (a million distinct addresses) is
read again on each search, as before, and stays bounded by the header bound (10 MiB).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

from ._addresses import Address, AddressParser
from .basesubject import casemap
from .search_text import decode_header

__all__ = ["address_text", "contains", "ADDRESS_TEXT_BYTES"]

ADDRESS_TEXT_BYTES = 64 * 1024 * 1024   # memory of cached values and texts, all sessions
# an entry's memory besides its two strings: the (text, longest) tuple and the OrderedDict's
# slot and node, 119-156 bytes an entry in tracemalloc as the table grows (it doubles), up to
# 202 while entries come and go (deleted slots wait for the next resize)
ENTRY_BYTES = 224
RUN_KEPT = 64   # identical addresses in a row kept in a cached text (`collapsed`)


def address_text(value: str) -> str:
    """An address header as Dovecot searches it (module docstring), not case-mapped."""
    return ", ".join(_items(value))


def _items(value: str) -> list[str]:
    parser = AddressParser(value.encode("utf-8", "surrogateescape"))
    out, in_group = [], False
    written: dict[Address, str] = {}   # identical addresses (a list of commas) written once
    for address in parser.parse() or ():
        a_name, a_route, a_mailbox, a_domain = address
        if a_domain is None:  # group start (mailbox = name) or group end (all None)
            out.append(f"{_dec(a_mailbox)}:" if not in_group else ";")
            in_group = not in_group
            continue
        item = written.get(address)
        if item is None:
            if not a_name and a_route is None:
                item = f"{_dec(a_mailbox)}@{_dec(a_domain)}"
            else:
                route = f"{_dec(a_route)}:" if a_route is not None else ""
                name = f"{decode_header(_dec(a_name))} " if a_name is not None else ""
                item = f"{name}<{route}{_dec(a_mailbox)}@{_dec(a_domain)}>"
            written[address] = item
        out.append(item)
    return out


def _dec(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "surrogateescape")


def collapsed(value: str) -> tuple[str, int]:
    """(text, longest needle it answers for): `casemap(address_text(value))` with every run of
    more than RUN_KEPT identical addresses cut to RUN_KEPT of them. Within a run the text is
    periodic (item and ", ", period P), so a needle no longer than (RUN_KEPT - 1) * P - 1 is
    found in the cut text exactly when it is found in the whole: an occurrence that leaves the
    run lies in its first or last characters, which are kept, and one inside it has a copy in
    the first P + len(needle) characters. Case mapping (RFC 5051: per character, then NFKD) is
    applied per address: the ", " between them is plain ASCII, so it gives what mapping the
    joined text gives."""
    items = _items(value)
    mapped: dict[str, str] = {}
    out: list[str] = []
    longest = sys.maxsize   # nothing cut: any needle
    i = 0
    while i < len(items):
        item, j = items[i], i + 1
        while j < len(items) and items[j] is item:   # one string object per distinct address
            j += 1
        text = mapped.get(item)
        if text is None:
            text = mapped[item] = casemap(item)
        if j - i > RUN_KEPT:
            out += [text] * RUN_KEPT
            longest = min(longest, (RUN_KEPT - 1) * (len(text) + 2) - 1)
        else:
            out += [text] * (j - i)
        i = j
    return ", ".join(out), longest


class TextCache:
    """value -> `collapsed(value)`, least recently used first out, within `budget` bytes of
    memory (`weight`)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.held = budget, 0
        self._texts: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._lock = threading.Lock()   # searches run in worker threads too

    def contains(self, value: str, needle: str) -> bool:
        """Is the case-mapped `needle` in the address text of `value`?"""
        with self._lock:
            found = self._texts.get(value)
            if found is not None:
                self._texts.move_to_end(value)
        if found is None:
            found = collapsed(value)
            self._keep(value, found)
        text, longest = found
        if len(needle) > longest:   # longer than a cut run keeps: the whole text, once
            return needle in casemap(address_text(value))
        return needle in text

    def _keep(self, value: str, found: tuple[str, int]) -> None:
        cost = weight(value, found[0])
        if cost > self.budget // 4:
            return
        with self._lock:
            if value not in self._texts:
                self._texts[value] = found
                self.held += cost
            while self.held > self.budget:
                old, (old_text, _) = self._texts.popitem(last=False)
                self.held -= weight(old, old_text)


def weight(value: str, text: str) -> int:
    """The memory an entry holds (module docstring)."""
    return sys.getsizeof(value) + sys.getsizeof(text) + ENTRY_BYTES


_CACHE = TextCache(ADDRESS_TEXT_BYTES)


def contains(value: str, needle: str) -> bool:
    """`needle in casemap(address_text(value))`, from the shared cache when it holds it."""
    return _CACHE.contains(value, needle)
