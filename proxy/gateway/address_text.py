"""The text SEARCH FROM, TO, CC and BCC match against (RFC 3501 6.4.4), and a bounded cache of it.

Theory of operation
-------------------
Dovecot searches an address header as its parsed list written back (``message_address_write``):
``Name <box@domain>``, missing parts filled in as MISSING_MAILBOX / MISSING_DOMAIN, groups as
``name: ...;``. `address_text(value)` builds that from `_addresses.AddressParser` with the
display names' RFC 2047 words decoded. Its cost grows with the list (a From of 1 MB of commas
is a million addresses, ~1 s of Python), and a search reads the header of every message it
tests, so the case-mapped text is kept: `searchable(value)` looks it up by the header value
itself in one LRU shared by every session and worker thread, bounded by the characters it holds
(`ADDRESS_TEXT_CHARS`, keys and texts). A text bigger than a quarter of that is not kept: such a
list is read again on each search (and stays bounded by the header bound, 10 MiB).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ._addresses import AddressParser
from .basesubject import casemap
from .search_text import decode_header

__all__ = ["address_text", "searchable", "ADDRESS_TEXT_CHARS"]

ADDRESS_TEXT_CHARS = 32 * 1024 * 1024   # characters of cached values and texts, all sessions


def address_text(value: str) -> str:
    """An address header as Dovecot searches it (module docstring), not case-mapped."""
    parser = AddressParser(value.encode("utf-8", "surrogateescape"))
    out, in_group = [], False
    for a_name, a_route, a_mailbox, a_domain in parser.parse() or ():
        if a_domain is None:  # group start (mailbox = name) or group end (all None)
            out.append(f"{_dec(a_mailbox)}:" if not in_group else ";")
            in_group = not in_group
        elif not a_name and a_route is None:
            out.append(f"{_dec(a_mailbox)}@{_dec(a_domain)}")
        else:
            route = f"{_dec(a_route)}:" if a_route is not None else ""
            name = f"{decode_header(_dec(a_name))} " if a_name is not None else ""
            out.append(f"{name}<{route}{_dec(a_mailbox)}@{_dec(a_domain)}>")
    return ", ".join(out)


def _dec(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "surrogateescape")


class TextCache:
    """value -> case-mapped address text, least recently used first out, at most `chars`
    characters of values and texts together."""

    def __init__(self, chars: int) -> None:
        self.chars, self.held = chars, 0
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()   # searches run in worker threads too

    def searchable(self, value: str) -> str:
        with self._lock:
            text = self._texts.get(value)
            if text is not None:
                self._texts.move_to_end(value)
                return text
        text = casemap(address_text(value))
        cost = len(value) + len(text)
        if cost <= self.chars // 4:
            with self._lock:
                if value not in self._texts:
                    self._texts[value] = text
                    self.held += cost
                while self.held > self.chars:
                    old, old_text = self._texts.popitem(last=False)
                    self.held -= len(old) + len(old_text)
        return text


_CACHE = TextCache(ADDRESS_TEXT_CHARS)


def searchable(value: str) -> str:
    """`casemap(address_text(value))`, from the shared cache when it holds it."""
    return _CACHE.searchable(value)
