"""RFC 5322 3.4 address lists with Dovecot's semantics: a port of ``message-address.c``.

Theory of operation
-------------------
`AddressParser` walks one raw header value with the `_rfc822.Rfc822` cursor and returns a flat
list of `Address` tuples ``(name, route, mailbox, domain)`` (ENVELOPE's addr-name, addr-adl,
addr-mailbox, addr-host; raw bytes or None). A group is a start record (the group name as
mailbox, the rest None) and an all-None end record. Like Dovecot it repairs what it can: a
missing mailbox or domain becomes ``MISSING_MAILBOX`` / ``MISSING_DOMAIN``, a broken ``<...>``
sets the domain to ``SYNTAX_ERROR``, a broken route ``INVALID_ROUTE``.

A hostile value is up to 10 MiB (`MimeLimits.max_header_bytes`), millions of addresses (a
From of commas is one empty address per byte), so the common cases cost little:

* an address is a plain tuple of bytes and None, which the garbage collector stops tracking
  at its first pass (a dataclass per address, two tracked objects, was walked by every
  collection while a list of millions grew);
* at the top level, an empty address (``,``) and a bare ``local@domain`` or ``local``
  followed by ``,`` or the end are recognised by one compiled pattern, giving what the full
  walk gives for them; anything else (comments, quotes, names, routes, groups, white space
  inside) takes the walk;
* ``parse(limit)`` stops after `limit` addresses: SORT reads only the first (RFC 5256 2.2),
  ENVELOPE at most `MimeLimits.max_envelope_addresses` per field (mime.py).
"""

from __future__ import annotations

import re
from typing import Final

from ._rfc822 import Rfc822

__all__ = ["Address", "AddressParser", "NAME", "ROUTE", "MAILBOX", "DOMAIN", "GROUP_END"]

# (name, route, mailbox, domain): the fields of one ENVELOPE address, in its order
Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
NAME: Final = 0
ROUTE: Final = 1
MAILBOX: Final = 2
DOMAIN: Final = 3
GROUP_END: Address = (None, None, None, None)
_EMPTY: Address = (None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")

# a bare dot-atom addr-spec (RFC 5322 3.4.1), its "@domain" optional, with no white space or
# comment inside, then optional white space; what follows must be "," or the end for the fast
# path to apply
_ATEXT = rb'[^\x00-\x20\x7f()<>\[\]:;@\\,."]'
_BARE = re.compile(rb"(%s+(?:\.%s*)*)(?:@(%s+(?:\.%s*)*))?[ \t\r\n]*" % ((_ATEXT,) * 4))


class _Enough(Exception):
    """`AddressParser.parse(limit)`: `limit` addresses are found, the rest is not read."""


class AddressParser:
    """message-address.c: RFC 5322 address lists, groups, and Dovecot's repairs."""

    def __init__(self, value: bytes) -> None:
        self.p = Rfc822(value, keep_comment=True)
        self.out: list[Address] = []
        self.left = -1            # addresses still wanted (-1: all)
        self.in_group = False     # a group start is out, its end is not yet
        self._clear()

    def _clear(self) -> None:
        self.name: bytes | None = None
        self.route: bytes | None = None
        self.mailbox: bytes | None = None
        self.domain: bytes | None = None

    def _found(self, address: Address) -> None:
        self.out.append(address)   # final once added: a group start is never taken back
        self.left -= 1
        if self.left == 0:
            raise _Enough

    def add(self) -> None:
        address = (self.name, self.route, self.mailbox, self.domain)
        self._clear()
        self._found(address)

    def parse(self, limit: int = -1) -> list[Address] | None:
        """The addresses of the value (None when there are none), at most `limit` of them
        (-1: all) and the value read only that far. When the limit stops the list inside a
        group, the group's end record is added after them."""
        self.left = limit
        try:
            self._parse()
        except _Enough:
            if self.in_group:
                self.out.append(GROUP_END)
        return self.out or None

    def first(self) -> Address | None:
        """`parse()[0]`, without reading the list past its first address: SORT and THREAD
        (RFC 5256, RFC 5957) read only that one, and a list of 10 MiB (the header bound) of
        commas is millions of addresses."""
        found = self.parse(1)
        return found[0] if found else None

    def add_fixed(self) -> None:
        if self.mailbox is None:
            self.mailbox = b"MISSING_MAILBOX"
        if self.domain is None:
            self.domain = b"MISSING_DOMAIN"
        self.add()

    def local_part(self) -> int:
        out = bytearray()
        p = self.p
        ret = p.quoted_string(out) if p.peek() == 0x22 else p.dot_atom(out)
        if ret < 0:
            return -1
        self.mailbox = bytes(out)
        return ret

    def domain_part(self) -> int:
        out = bytearray()
        ret = self.p.domain(out)
        if ret < 0:
            return -1
        self.domain = bytes(out)
        return ret

    def domain_list(self) -> int:
        out, p = bytearray(), self.p
        while True:
            if p.pos >= p.end:
                return 0
            if p.peek() != 0x40:
                break
            if out:
                out += b","
            out += b"@"
            ret = p.domain(out)
            if ret <= 0:
                return ret
            while p.skip_lwsp() > 0 and p.peek() == 0x2C:
                p.pos += 1
        self.route = bytes(out)
        return 1

    def angle_addr(self) -> int:
        """``<[@route:]local@domain>``; -1 when broken or cut short (Dovecot 2.3)."""
        p = self.p
        p.pos += 1
        if p.skip_lwsp() <= 0:
            return -1
        if p.peek() == 0x3E:  # "<>": an empty address, filled in as MISSING_*
            p.pos += 1
            return p.skip_lwsp()
        if p.peek() == 0x40:
            if self.domain_list() <= 0 or p.peek() != 0x3A:
                self.route = b"INVALID_ROUTE"
                return -1
            p.pos += 1
            if p.skip_lwsp() <= 0:
                return -1
        if self.local_part() <= 0:
            return -1
        if p.peek() == 0x40 and self.domain_part() <= 0:
            return -1
        if p.peek() != 0x3E:
            return -1
        p.pos += 1
        return p.skip_lwsp()

    def name_addr(self) -> int:
        out, p = bytearray(), self.p
        if p.phrase(out) <= 0 or p.peek() != 0x3C:
            return -1
        self.name = bytes(out) or None
        if self.angle_addr() < 0:
            self.domain = b"SYNTAX_ERROR"
        return 1 if p.pos < p.end else 0

    def addr_spec(self) -> int:
        p = self.p
        assert p.last_comment is not None  # the address parser keeps comments
        del p.last_comment[:]
        ret = self.local_part()
        if ret != 0 and p.peek() == 0x40:
            ret2 = self.domain_part()
            if ret2 <= 0:
                ret = ret2
        if p.last_comment:
            self.name = bytes(p.last_comment)
        return ret

    def one_mailbox(self) -> int:
        start = self.p.pos
        ret = self.name_addr()
        if ret < 0:
            self.p.pos = start
            self._clear()
            ret = self.addr_spec()
        self.add_fixed()
        return ret

    def group(self) -> int:
        out, p = bytearray(), self.p
        if p.phrase(out) <= 0 or p.peek() != 0x3A:
            return -1
        p.pos += 1
        ret = p.skip_lwsp()
        self.mailbox = bytes(out)
        self.in_group = True   # (before the start is added: a limit may stop the list there)
        self.add()
        if ret > 0 and p.peek() != 0x3B:
            while True:
                if self.one_mailbox() <= 0:
                    ret = -1
                    break
                if p.peek() != 0x2C:
                    break
                p.pos += 1
                if p.skip_lwsp() <= 0:
                    ret = -1
                    break
        if ret >= 0:
            if p.peek() != 0x3B:
                ret = -1
            else:
                p.pos += 1
                ret = p.skip_lwsp()
        self.in_group = False
        self.add()  # end of group: all NIL
        return 0 if ret == 0 else 1

    def _bare(self) -> int | None:
        """The fast path (module docstring): what `address()` returns for an empty address or
        a bare ``local[@domain]`` at the cursor, the address added; None for anything else."""
        p = self.p
        if p.data[p.pos] == 0x2C:   # "," alone: addr_spec finds nothing, add_fixed fills it
            self._found(_EMPTY)
            return -1
        m = _BARE.match(p.data, p.pos)
        if m is None:
            return None
        end = m.end()
        if end < p.end and p.data[end] != 0x2C:
            return None
        p.pos = end
        self._found((None, None, m[1], m[2] or b"MISSING_DOMAIN"))
        return 1 if end < p.end else 0

    def address(self) -> int:
        ret = self._bare()
        if ret is not None:
            return ret
        start, n = self.p.pos, len(self.out)
        ret = self.group()
        if ret < 0:
            del self.out[n:]
            self.p.pos = start
            self._clear()
            ret = self.one_mailbox()
        return ret

    def _parse(self) -> None:
        p = self.p
        if p.skip_lwsp() <= 0:
            return
        while True:
            if self.address() == 0:
                break
            if p.peek() != 0x2C:
                break
            p.pos += 1
            ret = p.skip_lwsp()
            if ret <= 0:
                if ret < 0:
                    self.add_fixed()
                break
