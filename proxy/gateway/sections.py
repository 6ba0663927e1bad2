"""FETCH body sections (RFC 3501 §6.4.5) cut from a stored message.

`fetch_section(raw, section, partial)` returns the exact bytes of ``BODY[section]<partial>``
(and of RFC822, RFC822.HEADER, RFC822.TEXT, RFC822.SIZE), with Dovecot's semantics:

* part numbers walk the tree of `mime.parse()`: the parts of a multipart are numbered from
  1; a non-multipart message (or encapsulated message) has exactly one part, its body;
  below a message/rfc822 part the numbers continue inside the encapsulated message
  (see `_find` for the exact walk);
* ``HEADER`` and ``TEXT`` apply to the message, or to the encapsulated message of a
  message/rfc822 part; ``MIME`` is the part's own MIME header;
* ``HEADER.FIELDS`` / ``HEADER.FIELDS.NOT`` keep whole header fields (continuation lines
  included) in message order and end with the blank line, even when no field matched;
* past the header bound (`MimeLimits.max_header_bytes`) ``HEADER.FIELDS`` answers as Dovecot
  2.3.19 does (checked live): its header parser counts the *values* of the lines read so far
  (what follows ``Name:`` and one blank, and whole continuation lines, without line ends) and
  cuts each line's value to what is left of the bound, so a field past it is ``Name: ``
  with an empty value, and a continuation line past it is an empty line, where the answer
  then ends (the filtered header is cut at its first empty line; answering from its cache,
  Dovecot leaves that line out instead). ``.NOT`` is served whole;
* a part that does not exist is empty; part number 0 is a syntax error;
* output lines end in CRLF, as IMAP requires (a stored bare LF is sent as CRLF), and NUL
  goes out as 0x80, as Dovecot sends it.

Pass the cached part table (`mime.MimeInfo.parts`), or the tree built from it once, as `parts`
to skip re-parsing.
"""

from __future__ import annotations

import re

from proxy.gateway import header_block, mime
from proxy.gateway._parts import DEFAULT_LIMITS
from proxy.gateway.numbers import InvalidNumber
from proxy.gateway.numbers import number as rfc_number

__all__ = ["fetch_section", "find_part", "split_section", "text_part", "SectionError"]


class SectionError(ValueError):
    """The section specification is not valid RFC 3501 syntax (the server answers BAD)."""


_SECTION = re.compile(
    rb"^(?P<path>\d+(?:\.\d+)*)?\.?(?P<text>HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?"
    rb"(?:\s*\((?P<fields>[^)]*)\))?$",
    re.IGNORECASE,
)


def fetch_section(raw: bytes, section: str | bytes, partial: tuple[int, int] | None = None,
                  *, parts: list | mime.Part | None = None,
                  max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes) -> bytes:
    """Bytes of ``BODY[section]<partial.start.length>`` of `raw`.

    `section` is what stands between the brackets (``""``, ``"1.2.MIME"``,
    ``"HEADER.FIELDS (From To)"``), or one of ``RFC822``, ``RFC822.HEADER``,
    ``RFC822.TEXT``, ``RFC822.SIZE`` (the last gives the size as ASCII digits).
    `max_header_bytes` is the header bound (`MimeLimits`) HEADER.FIELDS honours as Dovecot does.

    Raises:
        SectionError: malformed section text.
    """
    spec = section.encode("ascii") if isinstance(section, str) else bytes(section)
    spec = spec.strip()
    if isinstance(parts, mime.Part):
        root = parts
    else:
        root = mime.table_to_parts(parts) if parts is not None else mime.parse(raw)
    upper = spec.upper()
    if upper == b"RFC822.SIZE":
        return b"%d" % len(_crlf(raw))
    alias = {b"RFC822": b"", b"RFC822.HEADER": b"HEADER", b"RFC822.TEXT": b"TEXT"}
    if upper in alias:
        spec = alias[upper]
    data = _crlf(_select(raw, root, spec, max_header_bytes))
    if partial is not None:
        start, length = partial
        if start < 0 or length < 0:
            raise SectionError("negative partial range")
        data = data[start:start + length]
    return data


def find_part(root: mime.Part, path: list[int]) -> mime.Part | None:
    """The part at `path`, walked as BODY[section] walks it; None when it does not exist."""
    return _find(root, path)


def crlf(data: bytes) -> bytes:
    """A whole message as BODY[] sends it (bare LF as CRLF, NUL as 0x80)."""
    return _crlf(data)


def _crlf(data: bytes) -> bytes:
    """Bare LF as CRLF and NUL as 0x80, as Dovecot sends message text."""
    if b"\0" in data:
        data = data.replace(b"\0", b"\x80")
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def split_section(spec: bytes) -> tuple[list[int], bytes, bytes | None]:
    """(part numbers, specifier in upper case: b"", TEXT, HEADER, MIME, HEADER.FIELDS[.NOT],
    the field names or None) of a BODY section.

    Raises:
        SectionError: malformed section text.
    """
    m = _SECTION.match(spec)
    header_fields = (m.group("text") or b"").upper().startswith(b"HEADER.FIELDS") if m else False
    if not m or (m.group("fields") is not None) != header_fields:
        raise SectionError(f"bad section {spec!r}")
    try:   # RFC 3501 9: section-part is nz-numbers; a 5,000-digit one is an error, not an int
        path = [rfc_number(n) for n in m.group("path").split(b".")] if m.group("path") else []
    except InvalidNumber as exc:
        raise SectionError(str(exc)) from None
    if 0 in path:
        raise SectionError("part numbers start at 1")
    text = (m.group("text") or b"").upper()
    if text == b"MIME" and not path:
        raise SectionError("MIME needs a part number")
    return path, text, m.group("fields")


def text_part(root: mime.Part, path: list[int]) -> mime.Part | None:
    """The message whose body [path.]TEXT is: the whole message, or the encapsulated message
    of the message/rfc822 part at `path` (None: there is none, the section is empty)."""
    part = _find(root, path)
    if part is None or not path:
        return part
    return part.children[0] if part.kind == mime.RFC822 and part.children else None


def _select(raw: bytes, root: mime.Part, spec: bytes, bound: int) -> bytes:
    path, text, names = split_section(spec)
    part = _find(root, path)
    if part is None:
        return b""
    if text == b"MIME":
        return raw[part.start:part.header_end]
    if not text:
        return raw[part.header_end:part.end] if path else raw
    if path:  # HEADER/TEXT of a part: the encapsulated message of a message/rfc822 part
        if part.kind != mime.RFC822 or not part.children:
            return b""
        part = part.children[0]
    if text == b"TEXT":
        return raw[part.header_end:part.end]
    header = raw[part.start:part.header_end]
    if text == b"HEADER":
        return header
    assert names is not None
    wanted = {f.lower() for f in names.split()}
    if text == b"HEADER.FIELDS":   # always ends with the blank line
        return b"".join(_bounded_fields(header, wanted, bound)) + b"\r\n"
    fields = [f for name, f in _fields(header) if name.lower() not in wanted]
    # .NOT only keeps a blank line that was there
    if header.endswith(b"\n\r\n") or header.endswith(b"\n\n") or header in (b"\r\n", b"\n"):
        fields.append(b"\r\n")
    return b"".join(fields)


def _bounded_fields(header: bytes, wanted: set[bytes], bound: int) -> list[bytes]:
    """The lines of the fields named in `wanted` (lower case), each value cut to what is left
    of `bound` value bytes, as Dovecot's header parser (`header_block.Budget`) and filter give
    them (module docstring); the blank line that ends the answer is not included. The values
    of the lines between wanted fields are counted in bulk."""
    out: list[bytes] = []
    budget, find = header_block.Budget(bound), header_block.named(wanted)
    end, pos = header_block.blank_line(header), 0
    budget.expect(header, 0, end)
    while pos < end:
        if pos > 0:   # the first line is a field line even when it starts with a blank
            found = find.search(header, pos, end)
            start = end if found is None else found.start()
            if budget.skip(header, pos, start) < start:   # the bound falls before the field
                budget.left = 0
            if found is None:
                break
            pos = start
        eol = header.find(b"\n", pos, end) + 1 or end
        name, value, _, taken = budget.line(header, pos, eol, False)
        if name is None or name.lower() not in wanted:
            pos = eol
            continue
        out.append(header[pos:value + taken] + _line_end(header, eol))
        pos = eol
        while header[pos:pos + 1] in (b" ", b"\t") and pos < end:   # its continuation lines
            eol = header.find(b"\n", pos, end) + 1 or end
            _, value, _, taken = budget.line(header, pos, eol, True)
            if taken == 0:   # an empty line: the filtered header ends here
                return out
            out.append(header[pos:value + taken] + _line_end(header, eol))
            pos = eol
    return out


def _line_end(header: bytes, eol: int) -> bytes:
    return b"\r\n" if header[eol - 1:eol] == b"\n" else b""


def _find(root: mime.Part, path: list[int]) -> mime.Part | None:
    """The part at `path` ([] is the whole message), walked as Dovecot's imap-msgpart does:
    a multipart picks its n-th child; a non-multipart part only has number 1 (itself), and
    only a message/rfc822 part may be followed by more numbers, which continue inside
    the encapsulated message."""
    part: mime.Part | None = root
    for i, number in enumerate(path):
        more = i + 1 < len(path)
        assert part is not None  # each iteration returns when part becomes None
        if part.kind == mime.MULTIPART:
            part = part.children[number - 1] if number <= len(part.children) else None
        elif number != 1 or (more and part.kind != mime.RFC822):
            part = None
        if part is None:
            return None
        if more and part.kind == mime.RFC822:
            part = part.children[0] if part.children else None
            if part is None:
                return None
    return part


def _fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """Split a header block into (name, whole field incl. continuations); the blank line
    that ends the block is dropped."""
    out: list[tuple[bytes, bytes]] = []
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", header):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + line)
        else:
            out.append((line.split(b":", 1)[0].strip(), line))
    return out
