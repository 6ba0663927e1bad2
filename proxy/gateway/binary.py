"""FETCH BINARY[section] and BINARY.SIZE[section] (RFC 3516 4.2): a part with its
content-transfer-encoding removed.

Theory of operation: `binary_section(raw, part, whole=...)` walks the part a section names
(`sections.find_part`, the same walk as BODY[section]) the way Dovecot's index-mail-binary.c
does, so clients see Dovecot's bytes:

* a leaf part's body is decoded: base64 and quoted-printable are decoded (the standard
  library's `binascii`, which the `email` package decodes with too), 7bit/8bit/binary (or no
  Content-Transfer-Encoding) pass as they are, with bare LF sent as CRLF; NUL stays NUL;
* the headers of the parts inside the section are kept, except that a decoded part's
  Content-Transfer-Encoding fields are dropped and "Content-Transfer-Encoding: binary" is put
  before its blank line; boundaries, preambles and epilogues pass unchanged;
* RFC 3516 6 (section-binary) has part numbers only; like Dovecot, the FETCH handler also
  takes [n.]TEXT (this walk without the message's own header) and header sections (sent as
  BODY[] sends them), `imapd/_binary.py`; BINARY[0] is BAD (Dovecot: empty);
* an encoding that is not one of those five is `UnknownCte` (the server answers
  NO [UNKNOWN-CTE], RFC 3516 4.3); base64 or quoted-printable that cannot be decoded (a byte
  outside the alphabet, a bad "=" escape, data after the padding) is `InvalidData`
  (NO [PARSE], as Dovecot answers).

`Decoded.literal8` says whether the bytes go out as a literal8 (~{n}): always when they contain
NUL (RFC 3516 4.2), and, as Dovecot does, whenever a part was decoded or a header of a part in
the section holds NUL.

The work is linear in the size of the message; the FETCH handler runs it in a worker thread for
big messages (`imapd/_binary.py`). Pure: no I/O.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from ._parts import Part
from ._rfc822 import Rfc822

__all__ = ["Decoded", "BinaryError", "UnknownCte", "InvalidData", "binary_section"]

_BINARY_CTE = b"Content-Transfer-Encoding: binary\r\n"
_PASS, _QP, _BASE64 = "pass", "qp", "base64"
_CTES = {b"7bit": _PASS, b"8bit": _PASS, b"binary": _PASS, b"quoted-printable": _QP,
         b"base64": _BASE64}
_WHITESPACE = b" \t\r\n"   # skipped inside base64 (RFC 2045 6.8: line breaks; Dovecot: also SP, TAB)
# a run of blanks is tried once, from its start, and never given back: "[ \t]+(?=...)" tried it
# from each of its blanks and backtracked over the rest (40 KB of blanks before an "x": 30 s)
_QP_TRAILING_SPACE = re.compile(rb"(?<![ \t])[ \t]++(?=\r?\n|$)")
_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|$)")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class BinaryError(ValueError):
    """The section cannot be decoded; `code` is the IMAP response code."""

    code = b""


class UnknownCte(BinaryError):
    code = b"UNKNOWN-CTE"


class InvalidData(BinaryError):
    code = b"PARSE"


@dataclass(frozen=True, slots=True)
class Decoded:
    data: bytes
    literal8: bool


def binary_section(raw: bytes, part: Part | None, *, whole: bool) -> Decoded:
    """BINARY[section] of `raw`: `part` is the part the section names (None: it does not exist,
    which is empty), `whole` when the section is the whole message (header included).

    Raises:
        UnknownCte, InvalidData: see the module docstring.
    """
    if part is None:
        return Decoded(b"", False)
    out = _Output(raw)
    _add_part(out, part, include_header=whole)
    data = b"".join(out.pieces)
    return Decoded(data, out.converted or out.header_nul or b"\0" in data)


class _Output:
    def __init__(self, raw: bytes):
        self.raw = raw
        self.pieces: list[bytes] = []
        self.converted = self.header_nul = False
        self.copied_to = 0   # raw offset up to which raw bytes have been emitted (or skipped)

    def copy_to(self, end: int) -> None:
        """Emit raw[copied_to:end] unchanged but for bare LF as CRLF."""
        if end > self.copied_to:
            self.pieces.append(_crlf(self.raw[self.copied_to:end]))
        self.copied_to = max(self.copied_to, end)


def _add_part(out: _Output, part: Part, include_header: bool) -> None:
    """Dovecot's add_binary_part(): an explicit stack instead of recursion would gain nothing,
    the part tree is at most `MimeLimits.max_depth` levels deep."""
    header = out.raw[part.start:part.header_end]
    cte = _cte(header)
    out.header_nul = out.header_nul or b"\0" in header
    if not include_header:
        out.copied_to = part.header_end
    elif cte in (_QP, _BASE64):   # the header with its encoding said to be binary
        out.copy_to(part.start)
        out.pieces.append(_binary_header(header))
        out.copied_to = part.header_end
    else:
        out.copy_to(part.header_end)
    if part.children:
        for child in part.children:
            _add_part(out, child, include_header=True)
        out.copy_to(part.end)
        return
    body = out.raw[part.header_end:part.end]
    out.copied_to = part.end
    if not body:
        return
    if cte == _PASS:
        out.pieces.append(_crlf(body))
    else:
        out.converted = True
        out.pieces.append(_decode_base64(body) if cte == _BASE64 else _decode_qp(body))


def _cte(header: bytes) -> str:
    """The part's transfer encoding (the last Content-Transfer-Encoding field wins, as in
    Dovecot); no field is 7bit (RFC 2045 6.1). A folded field is unfolded (Dovecot 2.3 reads
    only its first line, so "Content-Transfer-Encoding:" CRLF " base64" is UNKNOWN-CTE there)."""
    found = _PASS
    for line in _header_fields(header):
        name, colon, value = line.partition(b":")
        if not colon or name.strip().lower() != b"content-transfer-encoding":
            continue
        p, token = Rfc822(value), bytearray()
        p.skip_lwsp()
        p.mime_token(token)
        kind = _CTES.get(bytes(token).lower())
        if kind is None:
            raise UnknownCte("Unknown Content-Transfer-Encoding")
        found = kind
    return found


def _header_fields(header: bytes) -> list[bytes]:
    """Whole header fields (continuation lines joined as they are), blank line dropped."""
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _binary_header(header: bytes) -> bytes:
    kept = [f for f in _header_fields(header)
            if f.partition(b":")[0].strip().lower() != b"content-transfer-encoding"]
    blank = b"\r\n" if header.endswith(b"\n\r\n") or header.endswith(b"\n\n") else b""
    return _crlf(b"".join(kept)) + _BINARY_CTE + blank


def _decode_base64(body: bytes) -> bytes:
    try:
        return binascii.a2b_base64(body.translate(None, _WHITESPACE), strict_mode=True)
    except binascii.Error:
        raise InvalidData("Invalid data in MIME part") from None


def _decode_qp(body: bytes) -> bytes:
    body = _QP_TRAILING_SPACE.sub(b"", body)   # RFC 2045 6.7 (3): trailing space is not data
    if _QP_BAD_ESCAPE.search(body):
        raise InvalidData("Invalid data in MIME part")
    return binascii.a2b_qp(body)


def _crlf(data: bytes) -> bytes:
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)
