"""MIME structure of a stored message: ENVELOPE, BODY, BODYSTRUCTURE and part offsets.

Theory of operation
-------------------
IMAP clients compare what they see against what Dovecot shows them, so the goal here is
Dovecot 2.3's output byte for byte (RFC 3501 §7.4.2), computed once per message at ingest
or APPEND by `analyze()` and kept by the store as an opaque JSON blob (`from_cache()`).

Two jobs, two tools:

* **Decoding** (RFC 2047 encoded words, RFC 2231 parameters, quoted-printable/base64,
  charsets) uses the standard library's `email` package: it is well kept, handles the
  RFC 2047/2231 corner cases and the odd charsets of real mail, and is what `search.py`
  relies on for decoded matching.
* **Structure** (where each part's header and body start and end) is scanned here on the
  raw bytes.  `email.parser` keeps no byte offsets and repairs broken mail in its own way,
  yet IMAP needs exact octet and line counts of the raw parts and the exact bytes of each
  section.  The scanner follows Dovecot's `message-parser.c` rules: a boundary line is
  ``--boundary`` as a line *prefix* (longest active boundary wins, outer boundaries close
  inner parts), the [CR]LF before a boundary line belongs to the boundary, a boundary line
  inside a header block ends that header, an unterminated multipart runs to EOF, parts
  without Content-Type are text/plain (message/rfc822 below multipart/digest).

ENVELOPE and BODYSTRUCTURE strings are *not* decoded: IMAP requires the raw
(still RFC 2047-encoded) header text.  Sizes are "virtual" sizes, i.e. counted as if every
line ended in CRLF, as IMAP octet counts must be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["Part", "parse", "envelope", "bodystructure", "analyze", "from_cache", "MimeInfo"]

DEFAULT_CHARSET = b"us-ascii"
CACHE_VERSION = 1

# ---------------------------------------------------------------------------------------
# The part tree
# ---------------------------------------------------------------------------------------

TEXT, MULTIPART, RFC822 = "text", "multipart", "rfc822"


@dataclass(eq=False)
class Part:
    """One MIME part: offsets into the raw message and the parsed header lines."""

    start: int
    header_end: int = 0  # == body_start: after the blank line (or where the header stopped)
    end: int = 0  # end of body
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # (name, raw value)
    kind: str = ""  # TEXT, MULTIPART, RFC822 or "" (other leaf)
    is_mime: bool = False
    digest: bool = False
    boundary: bytes | None = None
    children: list["Part"] = field(default_factory=list)
    # where the parent's content ends when this part is the last one before an outer
    # boundary: a header cut short by a boundary hands its last [CR]LF to the parent
    tail: int = -1

    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` (case-insensitive), raw and unfolded-as-is."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def _virtual(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(octets with every LF counted as CRLF, number of LFs) of raw[start:end]."""
    chunk = raw[start:end]
    lines = chunk.count(b"\n")
    bare = lines - chunk.count(b"\r\n")
    return len(chunk) + bare, lines


class _Scanner:
    """Dovecot-compatible structure scanner (see the module docstring)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.boundaries: list[tuple[bytes, Part]] = []  # innermost last

    def line_end(self, pos: int) -> int:
        nl = self.raw.find(b"\n", pos)
        return len(self.raw) if nl < 0 else nl + 1

    def boundary_at(self, pos: int) -> tuple[bytes, Part] | None:
        raw = self.raw
        if not self.boundaries or raw[pos:pos + 2] != b"--":
            return None
        best = None
        for boundary, owner in reversed(self.boundaries):  # innermost wins ties
            if raw.startswith(boundary, pos + 2) and (best is None or len(best[0]) < len(boundary)):
                best = (boundary, owner)
        return best

    def back_newline(self, pos: int, region_start: int) -> int:
        """Where a part ends when a boundary line starts at `pos`."""
        if pos <= region_start:
            return pos
        if pos >= 2 and self.raw[pos - 2:pos] == b"\r\n" and pos - 2 >= region_start:
            return pos - 2
        return pos - 1

    def parse_part(self, start: int, parent: Part | None) -> tuple[Part, int | None]:
        """Parse one part at `start`. Returns it and the position of the boundary line
        that ended it (None at EOF)."""
        part = Part(start=start, is_mime=parent is not None and parent.kind == MULTIPART)
        hit = self.read_header(part)
        if hit is not None:  # header cut short by a boundary line
            part.tail = hit
            return part, hit
        self.classify(part, parent)
        if part.kind == MULTIPART and part.boundary is not None:
            return part, self.parse_multipart(part)
        if part.kind == RFC822:
            child, hit = self.parse_part(part.header_end, part)
            part.children.append(child)
            part.end = child.end if child.tail < 0 else child.tail
            return part, hit
        hit = self.scan_body(part, part.header_end)
        if hit == part.header_end > part.start:
            # Dovecot: a boundary right after the blank line takes that line's [CR]LF,
            # so the header loses its blank line and the body is empty.
            part.header_end = part.end = self.back_newline(hit, part.start)
        return part, hit

    def read_header(self, part: Part) -> int | None:
        """Collect header lines; returns the position of a boundary line that cut the
        header short, else None."""
        raw, pos = self.raw, part.start
        while pos < len(raw):
            if self.boundary_at(pos) is not None:
                part.header_end = part.end = self.back_newline(pos, part.start)
                self.header_done(part)
                return pos
            eol = self.line_end(pos)
            line = raw[pos:eol]
            if line in (b"\n", b"\r\n"):
                part.header_end = eol
                self.header_done(part)
                return None
            if line[:1] in (b" ", b"\t") and part.headers:
                name, value = part.headers[-1]
                part.headers[-1] = (name, value + line)
            else:
                name, _, value = line.partition(b":")
                part.headers.append((name.rstrip(b" \t"), value))
            pos = eol
        part.header_end = part.end = len(raw)
        self.header_done(part)
        return None

    def header_done(self, part: Part) -> None:
        # Dovecot's header parser turns NULs into U+FFFD
        part.headers = [(n, _strip_value(v).replace(b"\0", b"\xef\xbf\xbd")) for n, v in part.headers]
        for name, _ in part.headers:
            lname = name.lower()
            if lname in (b"mime-version", b"content-type"):
                part.is_mime = True

    def classify(self, part: Part, parent: Part | None) -> None:
        ctype = part.header(b"content-type")
        if ctype is None or not part.is_mime:
            part.kind = RFC822 if parent is not None and parent.digest else TEXT
            return
        p = _Rfc822(ctype)
        p.skip_lwsp()
        mtype, ok = p.content_type()
        low = mtype.lower()
        if low == b"message/rfc822":
            part.kind = RFC822
        elif low.startswith(b"text") and (len(low) == 4 or low[4:5] == b"/"):
            part.kind = TEXT
        elif low.startswith(b"multipart/"):
            part.kind = MULTIPART
            part.digest = low[10:] == b"digest"
            if ok:
                for key, value in _rfc2231(p):
                    if key.lower() == b"boundary":
                        part.boundary = value
                        break

    def parse_multipart(self, part: Part) -> int | None:
        self.boundaries.append((part.boundary, part))
        depth = len(self.boundaries)
        hit = self.scan_body(part, part.header_end)  # the preamble
        while hit is not None:
            boundary, owner = self.boundary_at(hit)
            if owner is not part:  # an outer boundary closes us; part.end is set
                break
            pos = self.line_end(hit)
            del self.boundaries[depth:]  # inner boundaries are forgotten
            if self.raw.startswith(b"--", hit + 2 + len(boundary)):
                del self.boundaries[depth - 1:]
                return self.scan_body(part, pos)  # the epilogue
            child, hit = self.parse_part(pos, part)
            part.children.append(child)
            part.end = child.end if child.tail < 0 else child.tail
        del self.boundaries[depth - 1:]
        return hit

    def scan_body(self, part: Part, pos: int, region: int | None = None) -> int | None:
        """Scan to the next active boundary line (or EOF); sets part.end."""
        raw = self.raw
        region = pos if region is None else region
        if self.boundaries:
            while pos < len(raw):
                if self.boundary_at(pos) is not None:
                    part.end = self.back_newline(pos, region)
                    return pos
                pos = self.line_end(pos)
        part.end = len(raw)
        return None


def _strip_value(value: bytes) -> bytes:
    """Header value as Dovecot's header parser gives it: leading LWSP after the colon
    skipped, the final line ending dropped, inner folding kept."""
    if value.endswith(b"\r\n"):
        value = value[:-2]
    elif value.endswith(b"\n"):
        value = value[:-1]
    stripped = value.lstrip(b" \t")
    if not stripped and value:
        return value[1:]
    return stripped


def parse(raw: bytes) -> Part:
    """Parse `raw` into its part tree."""
    root, _ = _Scanner(raw).parse_part(0, None)
    return root


# ---------------------------------------------------------------------------------------
# RFC 822 tokenizer (Dovecot's rfc822-parser semantics)
# ---------------------------------------------------------------------------------------

_SPECIALS = set(b'()<>[]:;@\\,."')
_TSPECIALS = set(b'()<>@,;:\\"/[]?=')


def _is_atext(c: int) -> bool:
    return c >= 0x80 or (0x20 < c < 0x7F and c not in _SPECIALS)


def _is_token(c: int) -> bool:
    return c >= 0x80 or (0x20 < c < 0x7F and c not in _TSPECIALS)


class _Rfc822:
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


def _rfc2231(p: _Rfc822) -> list[tuple[bytes, bytes]]:
    """Parameters after the value, RFC 2231 continuations merged as Dovecot does
    (``name*=charset'lang'pct-encoded`` kept encoded, plain ones first)."""
    result: list[tuple[bytes, bytes]] = []
    cont: list[tuple[bytes, int, bool, bytes]] = []
    idx = 0  # like Dovecot, a bare "name*" reuses the previous index
    while True:
        ret, key, value = p.content_param()
        if ret == 0:
            break
        if ret < 0:
            if p.pos >= p.end:
                break
            p.pos += 1
            continue
        star = key.find(b"*")
        if star < 0:
            result.append((key, value))
            continue
        rest = key[star + 1:]
        if rest:
            digits = len(rest) - len(rest.lstrip(b"0123456789"))
            idx = int(rest[:digits]) if digits else 0
            rest = rest[digits:]
        else:
            rest = b"*"
        extended = rest[:1] == b"*"
        if rest[1:] if extended else rest:
            result.append((key, value))
        else:
            cont.append((key[:star], idx, extended, value))
    cont.sort(key=lambda c: (c[0], c[1]))
    i = 0
    while i < len(cont):
        j, ok, have_ext = i, True, False
        while j < len(cont) and cont[j][0].lower() == cont[i][0].lower():
            ok &= cont[j][1] == j - i
            have_ext |= cont[j][2]
            j += 1
        if not ok:
            for name, idx, ext, value in cont[i:j]:
                result.append((name + b"*%d" % idx + (b"*" if ext else b""), value))
        else:
            out = b"''" if not cont[i][2] and have_ext else b""
            for _, _, ext, value in cont[i:j]:
                out += value.replace(b"%", b"%25") if not ext and have_ext else value
            result.append((cont[i][0] + (b"*" if have_ext else b""), out))
        i = j
    return result


# ---------------------------------------------------------------------------------------
# IMAP string output (Dovecot's imap-quote.c)
# ---------------------------------------------------------------------------------------

def _literal(value: bytes) -> bytes:
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    """NIL, "quoted" or {literal}: literal for CR, LF, 8-bit or many escapes."""
    if value is None:
        return b"NIL"
    escapes = value.count(b'"') + value.count(b"\\")
    if escapes > 4 or b"\r" in value or b"\n" in value or any(c >= 0x80 for c in value):
        return _literal(value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def nstring_nolf(value: bytes | None) -> bytes:
    """nstring() with line breaks removed (a space kept between unfolded lines)."""
    if value is None or (b"\r" not in value and b"\n" not in value):
        return nstring(value)
    out = bytearray()
    for i, c in enumerate(value):
        if c not in (0x0D, 0x0A):
            out.append(c)
        elif i + 1 < len(value) and value[i + 1] not in b" \t\r\n":
            out.append(0x20)
    return nstring(bytes(out))


def string_for_humans(value: bytes) -> bytes:
    """TABs/CR/LF to spaces, runs of spaces squeezed, ends trimmed.
    Unchanged input is sent "quoted" as is; anything changed goes out as a literal."""
    if not value:
        return b'""'
    modify, out, last_lwsp = False, bytearray(), True
    for c in value:
        if c in (0x0D, 0x0A, 0x09, 0x20):
            if c != 0x20 or last_lwsp:
                modify = True
            if not last_lwsp:
                out.append(0x20)
            last_lwsp = True
        else:
            if c >= 0x80 or c in (0x22, 0x5C):
                modify = True
            out.append(c)
            last_lwsp = False
    if last_lwsp and out:
        out.pop()
        modify = True
    if not modify:
        return b'"' + value + b'"'
    if not out:
        return b'""'
    return _literal(bytes(out))


# ---------------------------------------------------------------------------------------
# ENVELOPE
# ---------------------------------------------------------------------------------------

@dataclass
class _Address:
    name: bytes | None = None
    route: bytes | None = None
    mailbox: bytes | None = None
    domain: bytes | None = None


class _AddressParser:
    """message-address.c: RFC 5322 address lists, groups, and Dovecot's repairs."""

    def __init__(self, value: bytes) -> None:
        self.p = _Rfc822(value, keep_comment=True)
        self.out: list[_Address] = []
        self.addr = _Address()

    def add(self) -> None:
        self.out.append(self.addr)
        self.addr = _Address()

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
            self.addr = _Address()
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
            self.addr = _Address()
            ret = self.mailbox()
        return ret

    def parse(self) -> list[_Address] | None:
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


def _address_list(values: list[bytes] | None) -> bytes:
    addrs = []
    for value in values or ():
        addrs += _AddressParser(value).parse() or []
    if not addrs:
        return b"NIL"
    items = []
    for a in addrs:
        name = b"NIL" if a.name is None else string_for_humans(a.name)
        items.append(b"(" + b" ".join((name, nstring(a.route), nstring(a.mailbox), nstring(a.domain))) + b")")
    return b"(" + b"".join(items) + b")"


_ADDRESS_FIELDS = (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")
_ENVELOPE_FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
                    b"in-reply-to", b"message-id")


def _envelope_of(part: Part) -> bytes:
    addrs: dict[bytes, list[bytes]] = {}
    found: dict[bytes, bytes] = {}
    for name, value in part.headers:
        lname = name.lower()
        if lname in _ENVELOPE_FIELDS:
            found[lname] = value  # Dovecot keeps the last one
            if lname in _ADDRESS_FIELDS:
                addrs.setdefault(lname, []).append(value)  # ...but joins address lists
    if not found:
        return b"NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL"
    subject = found.get(b"subject")
    frm = _address_list(addrs.get(b"from"))
    fields = [
        nstring_nolf(found.get(b"date")),
        b"NIL" if subject is None else string_for_humans(subject),
        frm,
        _address_list(addrs[b"sender"]) if b"sender" in addrs else frm,
        _address_list(addrs[b"reply-to"]) if b"reply-to" in addrs else frm,
        _address_list(addrs.get(b"to")),
        _address_list(addrs.get(b"cc")),
        _address_list(addrs.get(b"bcc")),
        nstring_nolf(found.get(b"in-reply-to")),
        nstring_nolf(found.get(b"message-id")),
    ]
    return b" ".join(fields)


def envelope(raw: bytes) -> bytes:
    """The ENVELOPE list of `raw`, parentheses included."""
    return b"(" + _envelope_of(parse(raw)) + b")"


# ---------------------------------------------------------------------------------------
# BODY / BODYSTRUCTURE
# ---------------------------------------------------------------------------------------

@dataclass
class _PartData:
    ctype: bytes | None = None
    subtype: bytes | None = None
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    cte: bytes | None = None
    cid: bytes | None = None
    md5: bytes | None = None
    description: bytes | None = None
    disposition: bytes | None = None
    disposition_params: list[tuple[bytes, bytes]] = field(default_factory=list)
    language: list[bytes] | None = None
    location: bytes | None = None


def _part_data(part: Part) -> _PartData:
    data = _PartData()
    if not part.is_mime:
        return data
    for name, value in part.headers:
        lname = name.lower()
        if not lname.startswith(b"content-"):
            continue
        key = lname[8:]
        if key == b"type" and data.ctype is None:
            p = _Rfc822(value)
            p.skip_lwsp()
            mtype, ok = p.content_type()
            data.ctype, slash, data.subtype = mtype.partition(b"/")
            if not slash:
                data.subtype = None
            if ok:
                data.params = _rfc2231(p)
        elif key == b"transfer-encoding" and data.cte is None:
            p, out = _Rfc822(value), bytearray()
            p.skip_lwsp()
            if p.mime_token(out) >= 0 and p.skip_lwsp() == 0 and out:
                data.cte = bytes(out)
        elif key == b"id" and data.cid is None:
            data.cid = value
        elif key == b"md5" and data.md5 is None:
            data.md5 = value
        elif key == b"description" and data.description is None:
            data.description = value
        elif key == b"location" and data.location is None:
            data.location = value
        elif key == b"language" and data.language is None:
            data.language = _languages(value)
        elif key == b"disposition" and not data.disposition_params:
            p, out = _Rfc822(value), bytearray()
            p.skip_lwsp()
            if p.mime_token(out) >= 0:
                data.disposition = bytes(out)
                data.disposition_params = _rfc2231(p)
    return data


def _languages(value: bytes) -> list[bytes] | None:
    p, langs = _Rfc822(value), []
    p.skip_lwsp()
    while True:
        out = bytearray()
        if p.atom(out) < 0:
            break
        langs.append(bytes(out))
        if p.peek() != 0x2C:
            break
        p.pos += 1
        p.skip_lwsp()
    return langs or None


def _params(params: list[tuple[bytes, bytes]], default_charset: bool) -> bytes:
    if not params and not default_charset:
        return b"NIL"
    items = []
    for key, value in params:
        items += [nstring(key), nstring(value)]
    if default_charset and not any(k.lower() == b"charset" for k, _ in params):
        items += [b'"charset"', b'"' + DEFAULT_CHARSET + b'"']
    return b"(" + b" ".join(items) + b")"


def _common_ext(data: _PartData) -> list[bytes]:
    if data.disposition is None:
        disp = b"NIL"
    else:
        disp = b"(" + nstring(data.disposition) + b" " + _params(data.disposition_params, False) + b")"
    lang = b"NIL" if data.language is None else b"(" + b" ".join(map(nstring, data.language)) + b")"
    return [disp, lang, nstring_nolf(data.location)]


_EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'


def _write(raw: bytes, part: Part, extended: bool) -> bytes:
    data = _part_data(part)
    if part.kind == MULTIPART:
        if part.children:
            out = b"".join(b"(" + _write(raw, c, extended) + b")" for c in part.children)
        else:
            out = _EMPTY_BODY + (b" NIL NIL NIL NIL)" if extended else b")")
        out += b" " + nstring(data.subtype or b"")
        if extended:
            out += b" " + b" ".join([_params(data.params, False)] + _common_ext(data))
        return out
    if part.kind == RFC822:
        items, text = [b'"message" "rfc822"'], False
    elif data.ctype is None:
        items, text = [b'"text" "plain"'], True
    else:
        text = data.ctype.lower() == b"text"
        items = [nstring(data.ctype) + b" " + nstring(data.subtype if data.subtype is not None else b"")]
    size, lines = _virtual(raw, part.header_end, part.end)
    items += [_params(data.params, text), nstring_nolf(data.cid), nstring_nolf(data.description),
              nstring(data.cte) if data.cte is not None else b'"7bit"', b"%d" % size]
    if text:
        items.append(b"%d" % lines)
    elif part.kind == RFC822:
        child = part.children[0]
        items += [b"(" + _envelope_of(child) + b")", b"(" + _write(raw, child, extended) + b")",
                  b"%d" % lines]
    if extended:
        items += [nstring_nolf(data.md5)] + _common_ext(data)
    return b" ".join(items)


def bodystructure(raw: bytes, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not extended) of `raw`, parentheses included."""
    return b"(" + _write(raw, parse(raw), extended) + b")"


# ---------------------------------------------------------------------------------------
# The ingest-time cache
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MimeInfo:
    """What `analyze()` computed, as the IMAP server needs it."""

    envelope: bytes
    bodystructure: bytes
    body: bytes
    size: int
    parts: list  # part table, see `part_table()`


def part_table(root: Part) -> list:
    """Flat, JSON-able tree: [start, header_end, end, kind, children...]."""
    return [root.start, root.header_end, root.end, root.kind, [part_table(c) for c in root.children]]


def table_to_parts(table: list) -> Part:
    start, header_end, end, kind, children = table
    return Part(start=start, header_end=header_end, end=end, kind=kind,
                children=[table_to_parts(c) for c in children])


def analyze(raw: bytes) -> dict:
    """Everything FETCH needs from the message text, computed once (at ingest or APPEND).

    Returns a JSON-serialisable dict; bytes are carried as latin-1 strings (lossless).
    """
    root = parse(raw)
    return {
        "v": CACHE_VERSION,
        "envelope": (b"(" + _envelope_of(root) + b")").decode("latin-1"),
        "bodystructure": (b"(" + _write(raw, root, True) + b")").decode("latin-1"),
        "body": (b"(" + _write(raw, root, False) + b")").decode("latin-1"),
        "size": _virtual(raw, 0, len(raw))[0],
        "parts": part_table(root),
    }


def from_cache(blob: bytes | str | dict) -> MimeInfo:
    """Inverse of ``json.dumps(analyze(raw)).encode()``; also accepts the dict itself."""
    data = blob if isinstance(blob, dict) else json.loads(blob)
    if data.get("v") != CACHE_VERSION:
        raise ValueError(f"unsupported MIME cache version {data.get('v')!r}")
    return MimeInfo(
        envelope=data["envelope"].encode("latin-1"),
        bodystructure=data["bodystructure"].encode("latin-1"),
        body=data["body"].encode("latin-1"),
        size=data["size"],
        parts=data["parts"],
    )
