"""MIME structure of a raw message: the part tree with byte offsets, scanned like Dovecot.

Theory of operation
-------------------
`email.parser` keeps no byte offsets and repairs broken mail in its own way, yet IMAP needs
exact octet and line counts of the raw parts and the exact bytes of each section.  So the
structure is scanned here on the raw bytes, following Dovecot's `message-parser.c` rules:

* a boundary line is ``--boundary`` as a line *prefix* (longest active boundary wins, outer
  boundaries close inner parts);
* the [CR]LF before a boundary line belongs to the boundary;
* a boundary line inside a header block ends that header (`Part.tail` then tells the parent
  where its content ends);
* an unterminated multipart runs to EOF;
* parts without Content-Type are text/plain (message/rfc822 below multipart/digest);
* bounds (`MimeLimits`, Dovecot's ``MESSAGE_PARSER_DEFAULT_MAX_NESTED_MIME_PARTS`` and
  ``..._MAX_TOTAL_MIME_PARTS``): a multipart or message/rfc822 part nested `max_depth` deep
  (the root is level 1) is not descended into but kept as an opaque leaf (`Part.opaque`;
  BODYSTRUCTURE shows it as application/octet-stream, as Dovecot 2.3 does), and once
  `max_parts` parts exist no further boundary is recognised: the last part runs to the end.
  So the recursion here, in `mime._write` and in the JSON part table is at most
  `max_depth` levels, and any message, however hostile, is parsed, stored and served.
* a part's header fields are read by `header_block` as Dovecot 2.3.19 reads them: the bound
  (`max_header_bytes`, Dovecot's ``MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE``, 10 MiB) counts
  header *values*; the value crossing it is cut and later fields have empty values (ENVELOPE,
  BODYSTRUCTURE, SEARCH, SORT). The header is still scanned to its end, so the body starts
  where it does and BODY[]/BODY[HEADER] stay byte-exact.

The scanner stays hand-written rather than `email.parser`: IMAP needs the exact byte offsets
of every part, and `email` keeps none (it also repairs broken mail differently from Dovecot,
whose output clients compare against).

`parse(raw)` returns the root `Part`; `part_table()` / `table_to_parts()` turn the tree into
the JSON-able table `mime.analyze()` caches and back (offsets and kinds only, no headers).
`rfc2231_params()` (Dovecot's ``rfc2231-parser.c``) reads Content-Type/-Disposition
parameters for the scanner (``boundary``) and for BODYSTRUCTURE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._rfc822 import Rfc822
from .header_block import Fields, blank_line
from .header_block import fields as header_fields

__all__ = ["TEXT", "MULTIPART", "RFC822", "Part", "MimeLimits", "parse", "part_table",
           "table_to_parts", "fill_headers", "rfc2231_params"]

TEXT, MULTIPART, RFC822 = "text", "multipart", "rfc822"
MAX_DEPTH_CEILING = 200   # what the recursion of parse/_write/JSON can take (limit 1000 frames)
ENVELOPE_ADDRESSES = 10_000   # gateway.limits.envelope_max_addresses (README, gateway)
@dataclass(frozen=True)
class MimeLimits:
    """How far the scanner follows the structure (gateway.mime_max_depth / mime_max_parts)."""

    max_depth: int = 100     # Dovecot 2.3: parts nested deeper are opaque leaves
    max_parts: int = 10_000  # Dovecot 2.3: no boundary is recognised past this many parts
    # Dovecot 2.3: MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE, header bytes analysed per part
    max_header_bytes: int = 10 * 1024 * 1024
    # not Dovecot's (it writes every address): address records written per ENVELOPE field
    # (mime._address_list); a From of 10 MiB of commas was 10 million of them, 44 bytes each
    max_envelope_addresses: int = ENVELOPE_ADDRESSES

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH_CEILING or self.max_parts < 1 \
                or self.max_header_bytes < 1 or self.max_envelope_addresses < 1:
            raise ValueError(f"MIME limits out of range: depth 1..{MAX_DEPTH_CEILING}, parts >= 1, "
                             "header bytes >= 1, envelope addresses >= 1")


DEFAULT_LIMITS = MimeLimits()


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
    opaque: bool = False  # a multipart or message/rfc822 past MimeLimits.max_depth, not descended

    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` (case-insensitive), raw and unfolded-as-is."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


# where a part's header may end: a blank line, or a line starting "--" (maybe a boundary)
_HEADER_STOP = re.compile(rb"\n\r?\n|\n--")


class _Scanner:
    """Dovecot-compatible structure scanner (see the module docstring)."""

    def __init__(self, raw: bytes, limits: MimeLimits) -> None:
        self.raw, self.limits = raw, limits
        self.boundaries: list[tuple[bytes, Part]] = []  # innermost last
        self.count = 0  # parts made so far
        self.exhausted = False  # max_parts reached: boundaries are no longer recognised

    def line_end(self, pos: int) -> int:
        nl = self.raw.find(b"\n", pos)
        return len(self.raw) if nl < 0 else nl + 1

    def boundary_at(self, pos: int) -> tuple[bytes, Part] | None:
        raw = self.raw
        if not self.boundaries or raw[pos:pos + 2] != b"--" or self.exhausted:
            return None
        best = None
        for boundary, owner in reversed(self.boundaries):  # innermost wins ties
            if raw.startswith(boundary, pos + 2) and (best is None or len(best[0]) < len(boundary)):
                best = (boundary, owner)
        return best

    def header_stop(self, pos: int) -> int:
        """`blank_line(raw, pos)` when no boundary line comes first; else a point just past
        that boundary line's "--" (the header reader stops at the boundary). Either way the
        search ends at the part's end, not at a blank line far beyond (linear in parts)."""
        raw = self.raw
        if raw.startswith((b"\n", b"\r\n"), pos):
            return pos
        if raw.startswith(b"--", pos) and self.boundary_at(pos) is not None:
            return pos + 2
        for found in _HEADER_STOP.finditer(raw, pos):
            at = found.start()
            if raw[at + 1] != 45:   # (not "-": the blank line, as blank_line finds it)
                return at + 1
            if self.boundary_at(at + 1) is not None:
                return at + 3
        return len(raw)

    def back_newline(self, pos: int, region_start: int) -> int:
        """Where a part ends when a boundary line starts at `pos`."""
        if pos <= region_start:
            return pos
        if pos >= 2 and self.raw[pos - 2:pos] == b"\r\n" and pos - 2 >= region_start:
            return pos - 2
        return pos - 1

    def parse_part(self, start: int, parent: Part | None, depth: int = 0) -> tuple[Part, int | None]:
        """Parse one part at `start`, `depth` levels below the root. Returns it and the
        position of the boundary line that ended it (None at EOF)."""
        part = Part(start=start, is_mime=parent is not None and parent.kind == MULTIPART)
        self.count += 1
        self.exhausted = self.count >= self.limits.max_parts  # the last part runs to EOF
        hit = self.read_header(part)
        if hit is not None:  # header cut short by a boundary line
            part.tail = hit
            return part, hit
        self.classify(part, parent)
        if part.kind in (MULTIPART, RFC822) and depth + 1 >= self.limits.max_depth:
            part.kind, part.opaque, part.boundary = "", True, None  # an opaque leaf (Dovecot)
        if part.kind == RFC822 and self.exhausted:
            # Dovecot enters a message/rfc822 body only while total parts < max_total_mime_parts;
            # without this the embedded message's part would be one past the limit.
            part.kind, part.opaque = "", True
        if part.kind == MULTIPART and part.boundary is not None:
            return part, self.parse_multipart(part, depth)
        if part.kind == RFC822:
            child, hit = self.parse_part(part.header_end, part, depth + 1)
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
        header short, else None. Lines are handed to `header_block.Fields` in blocks: only a
        line starting with "--" is looked at alone, while boundaries are active."""
        raw, pos = self.raw, part.start
        fields = Fields(raw, self.limits.max_header_bytes)
        watch = bool(self.boundaries) and not self.exhausted
        # (with boundaries, no further than the first boundary line: a header it cuts short
        # has no blank line, and the next may be a long way off, past many more parts)
        blank = self.header_stop(pos) if watch else blank_line(raw, pos)
        fields.budget.expect(raw, pos, blank)
        while pos < blank:
            dash = pos if not watch or raw.startswith(b"--", pos) else raw.find(b"\n--", pos, blank) + 1
            dash = dash if watch and dash else blank
            fields.add_block(pos, dash)
            if dash >= blank:
                break
            if self.boundary_at(dash) is not None:
                part.header_end = part.end = self.back_newline(dash, part.start)
                self.header_done(part, fields.result())
                return dash
            pos = self.line_end(dash)
            fields.add_block(dash, pos)
        part.header_end = self.line_end(blank) if blank < len(raw) else len(raw)
        if blank >= len(raw):
            part.end = len(raw)
        self.header_done(part, fields.result())
        return None

    @staticmethod
    def header_done(part: Part, fields: list[tuple[bytes, bytes]]) -> None:
        part.headers = fields
        for name, _ in part.headers:
            lname = name.lower()
            if lname in (b"mime-version", b"content-type"):
                part.is_mime = True

    def classify(self, part: Part, parent: Part | None) -> None:
        ctype = part.header(b"content-type")
        if ctype is None or not part.is_mime:
            part.kind = RFC822 if parent is not None and parent.digest else TEXT
            return
        p = Rfc822(ctype)
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
                for key, value in rfc2231_params(p):
                    if key.lower() == b"boundary":
                        part.boundary = value
                        break

    def parse_multipart(self, part: Part, depth: int) -> int | None:
        assert part.boundary is not None  # parse_part calls this only for a multipart with one
        self.boundaries.append((part.boundary, part))
        level = len(self.boundaries)
        hit = self.scan_body(part, part.header_end)  # the preamble
        while hit is not None:
            found = self.boundary_at(hit)
            assert found is not None  # scan_body and read_header stop only at a boundary line
            boundary, owner = found
            if owner is not part:  # an outer boundary closes us; part.end is set
                break
            pos = self.line_end(hit)
            del self.boundaries[level:]  # inner boundaries are forgotten
            if self.raw.startswith(b"--", hit + 2 + len(boundary)):
                del self.boundaries[level - 1:]
                return self.scan_body(part, pos)  # the epilogue
            child, hit = self.parse_part(pos, part, depth + 1)
            part.children.append(child)
            part.end = child.end if child.tail < 0 else child.tail
        del self.boundaries[level - 1:]
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


def fill_headers(raw: bytes, part: Part, in_multipart: bool,
                 limits: MimeLimits = DEFAULT_LIMITS) -> Part:
    """Give a part of `table_to_parts()` (which keeps offsets only) its header fields and
    `is_mime` again, read from raw[part.start:part.header_end] as the scanner reads them."""
    if not part.headers:
        _Scanner.header_done(part, header_fields(raw, limits.max_header_bytes, part.start,
                                                 part.header_end))
    part.is_mime = part.is_mime or in_multipart
    return part


def parse(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> Part:
    """Parse `raw` into its part tree, at most `limits.max_depth` levels deep."""
    root, _ = _Scanner(raw, limits).parse_part(0, None)
    return root


def part_table(root: Part) -> list:
    """Flat, JSON-able tree: [start, header_end, end, kind, children...]."""
    return [root.start, root.header_end, root.end, root.kind, [part_table(c) for c in root.children]]


def table_to_parts(table: list) -> Part:
    start, header_end, end, kind, children = table
    return Part(start=start, header_end=header_end, end=end, kind=kind,
                children=[table_to_parts(c) for c in children])


def rfc2231_params(p: Rfc822) -> list[tuple[bytes, bytes]]:
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
        else:   # RFC 2231 3: the pieces joined once (`bytes +=` per piece was quadratic)
            pieces = [b"''"] if not cont[i][2] and have_ext else []
            pieces += [value.replace(b"%", b"%25") if not ext and have_ext else value
                       for _, _, ext, value in cont[i:j]]
            result.append((cont[i][0] + (b"*" if have_ext else b""), b"".join(pieces)))
        i = j
    return result
