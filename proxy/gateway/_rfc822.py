"""RFC 822 / RFC 5322 header-value tokenizing with Dovecot's semantics (``rfc822-parser.c``).

Theory of operation
-------------------
ENVELOPE, BODYSTRUCTURE and SEARCH must see header values exactly as Dovecot 2.3 does, repairs
of broken mail included, so this is a port of Dovecot's tokenizer rather than a use of `email`:

* `Rfc822` mirrors ``rfc822-parser.c``: a cursor (`pos`, `end`) over one raw header value.
  Every method returns 1 (more input follows), 0 (end of the value) or -1 (syntax error) and
  appends what it read to a caller's `bytearray`; LWSP and (nested) comments are skipped after
  each token, and with ``keep_comment`` the last comment is kept (an addr-spec's display name).
  `content_type()` and `content_param()` read the MIME ``type/subtype; key=value`` grammar;
  `_parts.rfc2231_params()` merges the parameters.
* Runs of atom, token and white-space bytes are matched by compiled patterns (C), not a
  Python step per byte: a hostile header is up to 10 MiB (`MimeLimits.max_header_bytes`).

The address-list parser built on it (``message-address.c``) is `_addresses.py`. Values stay
raw bytes (still RFC 2047-encoded): decoding is the caller's business.
"""

from __future__ import annotations

import re

__all__ = ["Rfc822", "is_atext"]

_SPECIALS = set(b'()<>[]:;@\\,."')

# RFC 5322 3.2.3 atext (8-bit bytes included, as Dovecot reads them), RFC 2045 5.1 token; the
# runs a cursor reads, as patterns: `match(data, pos).end()` is where the run stops
_ATEXT = re.compile(rb'[^\x00-\x20\x7f()<>\[\]:;@\\,."]*')
_ATEXT_OR_DOT = re.compile(rb'[^\x00-\x20\x7f()<>\[\]:;@\\,"]*')
_TOKEN_OR_DOT = re.compile(rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]*')
_LWSP = re.compile(rb"[ \t\r\n]*")


def is_atext(c: int) -> bool:
    return c >= 0x80 or (0x20 < c < 0x7F and c not in _SPECIALS)


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
        while True:
            self.pos = _LWSP.match(self.data, self.pos).end()   # type: ignore[union-attr]
            if self.pos >= self.end:
                return 0
            if self.data[self.pos] != 0x28:
                return 1
            if self.skip_comment() < 0:
                return -1

    def _run(self, run: re.Pattern[bytes], out: bytearray) -> int:
        start = self.pos
        self.pos = run.match(self.data, start).end()   # type: ignore[union-attr]
        out += self.data[start:self.pos]
        return self.skip_lwsp() if self.pos < self.end else 0

    def atom(self, out: bytearray) -> int:
        if self.pos >= self.end or not is_atext(self.data[self.pos]):
            return -1
        return self._run(_ATEXT, out)

    def dot_atom(self, out: bytearray) -> int:
        if self.pos >= self.end or not is_atext(self.data[self.pos]):
            return -1
        while True:
            ret = self._run(_ATEXT, out)
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
        return self._run(_TOKEN_OR_DOT, out)

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
                ret = self._run(_ATEXT_OR_DOT, out)
            if ret <= 0:
                return ret
            c = self.data[self.pos]
            if not is_atext(c) and c not in (0x22, 0x2E):
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
