"""RFC 822 / RFC 5322 header-value parsing with Dovecot's semantics: a tokenizer and an address parser.

Theory of operation
-------------------
ENVELOPE, BODYSTRUCTURE and SEARCH must see header values exactly as Dovecot 2.3 does, repairs
of broken mail included, so this is a port of two Dovecot files rather than a use of `email`:

* `Rfc822` mirrors ``rfc822-parser.c``: a cursor (`pos`, `end`) over one raw header value.
  Every method returns 1 (more input follows), 0 (end of the value) or -1 (syntax error) and
  appends what it read to a caller's `bytearray`; LWSP and (nested) comments are skipped after
  each token, and with ``keep_comment`` the last comment is kept (an addr-spec's display name).
  `content_type()` and `content_param()` read the MIME ``type/subtype; key=value`` grammar;
  `_parts.rfc2231_params()` merges the parameters.
* `AddressParser` mirrors ``message-address.c``: an address list, with groups, becomes a flat
  list of `Address` records (a group is a start record with the group name as `mailbox` and
  an all-None end record).  Like Dovecot it repairs what it can: a missing mailbox or domain
  becomes ``MISSING_MAILBOX`` / ``MISSING_DOMAIN``, a broken ``<...>`` sets the domain to
  ``SYNTAX_ERROR``, a broken route ``INVALID_ROUTE``.

Values stay raw bytes (still RFC 2047-encoded): decoding is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Rfc822", "Address", "AddressParser"]

_SPECIALS = set(b'()<>[]:;@\\,."')
_TSPECIALS = set(b'()<>@,;:\\"/[]?=')


def _is_atext(c: int) -> bool:
    return c >= 0x80 or (0x20 < c < 0x7F and c not in _SPECIALS)


def _is_token(c: int) -> bool:
    return c >= 0x80 or (0x20 < c < 0x7F and c not in _TSPECIALS)


class Rfc822:
    """A cursor over a header value; methods mirror rfc822-parser.c (1 more, 0 end, -1 bad)."""

    def __init__(self, data: bytes, keep_comment: bool = False) -> None:
        self.data, self.pos, self.end = data, 0, len(data)
        self.last_comment: bytearray | None = bytearray() if keep_comment else None

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < self.end else -1

    def skip_comment(self) -> int:
        level, self.pos = 1, self.pos + 1
        if self.last_comment is not None:
            del self.last_comment[:]
        start = self.pos
        while self.pos < self.end:
            c = self.data[self.pos]
            if c == 0x28:
                level += 1
            elif c == 0x29:
                level -= 1
                if level == 0:
                    if self.last_comment is not None:
                        self.last_comment += self.data[start:self.pos]
                    self.pos += 1
                    return 1 if self.pos < self.end else 0
            elif c == 0x5C:
                if self.last_comment is not None:
                    self.last_comment += self.data[start:self.pos]
                start = self.pos + 1
                self.pos += 1
                if self.pos >= self.end:
                    return -1
            self.pos += 1
        return -1

    def skip_lwsp(self) -> int:
        while self.pos < self.end:
            c = self.data[self.pos]
            if c in (0x20, 0x09, 0x0D, 0x0A):
                self.pos += 1
            elif c == 0x28:
                if self.skip_comment() < 0:
                    return -1
            else:
                break
        return 1 if self.pos < self.end else 0

    def _run(self, pred, out: bytearray) -> int:
        start = self.pos
        while self.pos < self.end and pred(self.data[self.pos]):
            self.pos += 1
        out += self.data[start:self.pos]
        return self.skip_lwsp() if self.pos < self.end else 0

    def atom(self, out: bytearray) -> int:
        if self.pos >= self.end or not _is_atext(self.data[self.pos]):
            return -1
        return self._run(_is_atext, out)

    def dot_atom(self, out: bytearray) -> int:
        if self.pos >= self.end or not _is_atext(self.data[self.pos]):
            return -1
        while True:
            ret = self._run(_is_atext, out)
            if ret <= 0:
                return ret
            if self.data[self.pos] != 0x2E:
                return 1
            self.pos += 1
            out += b"."
            ret = self.skip_lwsp()
            if ret <= 0:
                return ret

    def mime_token(self, out: bytearray) -> int:
        return self._run(lambda c: _is_token(c) or c == 0x2E, out)

    def quoted_string(self, out: bytearray) -> int:
        self.pos += 1
        start = self.pos
        while self.pos < self.end:
            c = self.data[self.pos]
            if c == 0x22:
                out += self.data[start:self.pos]
                self.pos += 1
                return self.skip_lwsp()
            if c == 0x0A:
                stop = self.pos - 1 if self.pos > start and self.data[self.pos - 1] == 0x0D else self.pos
                out += self.data[start:stop]
                start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                out += self.data[start:self.pos - 1]
                start = self.pos
            self.pos += 1
        return -1

    def phrase(self, out: bytearray) -> int:
        if self.pos >= self.end:
            return 0
        if self.data[self.pos] == 0x2E:
            return -1
        while True:
            if self.data[self.pos] == 0x22:
                ret = self.quoted_string(out)
            else:
                ret = self._run(lambda c: _is_atext(c) or c == 0x2E, out)
            if ret <= 0:
                return ret
            c = self.data[self.pos]
            if not _is_atext(c) and c not in (0x22, 0x2E):
                break
            out += b" "
        return self.skip_lwsp()

    def domain(self, out: bytearray) -> int:
        self.pos += 1  # '@'
        if self.skip_lwsp() <= 0:
            return -1
        if self.data[self.pos] != 0x5B:
            return self.dot_atom(out)
        start = self.pos
        while self.pos < self.end:
            c = self.data[self.pos]
            if c == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    break
            elif c == 0x5D:
                self.pos += 1
                out += self.data[start:self.pos]
                return self.skip_lwsp()
            self.pos += 1
        return -1

    def content_type(self) -> tuple[bytes, bool]:
        """``type/subtype`` and whether it parsed. Like Dovecot 2.3, a value cut short
        right after the type keeps the type; other breakage yields b""."""
        out = bytearray()
        if self.skip_lwsp() <= 0:
            return b"", False
        ret = self.mime_token(out)
        if ret <= 0 or not out:
            return bytes(out), False
        if self.peek() != 0x2F:
            return b"", False
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return b"", False
        out += b"/"
        if self.mime_token(out) < 0:
            return b"", False
        return bytes(out), True

    def content_param(self) -> tuple[int, bytes, bytes]:
        if self.pos >= self.end:
            return 0, b"", b""
        if self.data[self.pos] != 0x3B:
            return -1, b"", b""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1, b"", b""
        key = bytearray()
        if self.mime_token(key) <= 0 or self.peek() != 0x3D:
            return -1, b"", b""
        self.pos += 1
        value = bytearray()
        ret = self.skip_lwsp()
        if ret <= 0:
            pass
        elif self.data[self.pos] == 0x22:
            ret = self.quoted_string(value)
        elif self.data[self.pos] == 0x3D:
            while self.pos < self.end and self.data[self.pos] not in b"; \t\r\n":
                value.append(self.data[self.pos])
                self.pos += 1
        else:
            ret = self.mime_token(value)
        return (-1 if ret < 0 else 1), bytes(key), bytes(value)


@dataclass
class Address:
    """One parsed address (ENVELOPE's addr-name, addr-adl, addr-mailbox, addr-host); raw bytes."""

    name: bytes | None = None
    route: bytes | None = None
    mailbox: bytes | None = None
    domain: bytes | None = None


class _FirstFound(Exception):
    """`AddressParser.first()`: the first address is complete, the rest is not read."""


class AddressParser:
    """message-address.c: RFC 5322 address lists, groups, and Dovecot's repairs."""

    def __init__(self, value: bytes) -> None:
        self.p = Rfc822(value, keep_comment=True)
        self.out: list[Address] = []
        self.addr = Address()
        self.first_only = False

    def add(self) -> None:
        self.out.append(self.addr)   # final once added: a group start is never taken back
        self.addr = Address()
        if self.first_only:
            raise _FirstFound

    def first(self) -> Address | None:
        """`parse()[0]`, without reading the list past its first address: SORT and THREAD
        (RFC 5256, RFC 5957) read only that one, and a list of 10 MiB (the header bound) of
        commas is millions of addresses, each a few microseconds of Python."""
        self.first_only = True
        try:
            self.parse()
        except _FirstFound:
            pass
        return self.out[0] if self.out else None

    def add_fixed(self) -> None:
        if self.addr.mailbox is None:
            self.addr.mailbox = b"MISSING_MAILBOX"
        if self.addr.domain is None:
            self.addr.domain = b"MISSING_DOMAIN"
        self.add()

    def local_part(self) -> int:
        out = bytearray()
        p = self.p
        ret = p.quoted_string(out) if p.peek() == 0x22 else p.dot_atom(out)
        if ret < 0:
            return -1
        self.addr.mailbox = bytes(out)
        return ret

    def domain(self) -> int:
        out = bytearray()
        ret = self.p.domain(out)
        if ret < 0:
            return -1
        self.addr.domain = bytes(out)
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
        self.addr.route = bytes(out)
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
                self.addr.route = b"INVALID_ROUTE"
                return -1
            p.pos += 1
            if p.skip_lwsp() <= 0:
                return -1
        if self.local_part() <= 0:
            return -1
        if p.peek() == 0x40 and self.domain() <= 0:
            return -1
        if p.peek() != 0x3E:
            return -1
        p.pos += 1
        return p.skip_lwsp()

    def name_addr(self) -> int:
        out, p = bytearray(), self.p
        if p.phrase(out) <= 0 or p.peek() != 0x3C:
            return -1
        self.addr.name = bytes(out) or None
        if self.angle_addr() < 0:
            self.addr.domain = b"SYNTAX_ERROR"
        return 1 if p.pos < p.end else 0

    def addr_spec(self) -> int:
        p = self.p
        assert p.last_comment is not None  # the address parser keeps comments
        del p.last_comment[:]
        ret = self.local_part()
        if ret != 0 and p.peek() == 0x40:
            ret2 = self.domain()
            if ret2 <= 0:
                ret = ret2
        if p.last_comment:
            self.addr.name = bytes(p.last_comment)
        return ret

    def mailbox(self) -> int:
        start = self.p.pos
        ret = self.name_addr()
        if ret < 0:
            self.p.pos = start
            self.addr = Address()
            ret = self.addr_spec()
        self.add_fixed()
        return ret

    def group(self) -> int:
        out, p = bytearray(), self.p
        if p.phrase(out) <= 0 or p.peek() != 0x3A:
            return -1
        p.pos += 1
        ret = p.skip_lwsp()
        self.addr.mailbox = bytes(out)
        self.add()
        if ret > 0 and p.peek() != 0x3B:
            while True:
                if self.mailbox() <= 0:
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
        self.add()  # end of group: all NIL
        return 0 if ret == 0 else 1

    def address(self) -> int:
        start, n = self.p.pos, len(self.out)
        ret = self.group()
        if ret < 0:
            del self.out[n:]
            self.p.pos = start
            self.addr = Address()
            ret = self.mailbox()
        return ret

    def parse(self) -> list[Address] | None:
        p = self.p
        if p.skip_lwsp() <= 0:
            return None
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
        return self.out or None
