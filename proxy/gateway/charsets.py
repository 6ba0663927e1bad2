"""Text in a charset that the mail itself names (Content-Type's charset, RFC 2047 words).

The name comes from untrusted bytes, and Python's codec registry holds more than the charsets
of mail: "idna" and "undefined" raise UnicodeError whatever the error handler, "punycode" and
the "*unicode-escape" codecs turn text into something else, a NUL in the name raises
ValueError, bytes-to-bytes codecs ("zlib", "rot13") raise LookupError. Such names are read as
an unknown charset is: as UTF-8 with U+FFFD for invalid sequences (Dovecot's iconv does not
know them either, and SEARCH then matches the text as UTF-8). So no message can make
decoding fail.

`charset_params(value)` cuts a Content-Type value to what `email.message.Message`'s
`get_content_charset()` reads (the type and the charset parameter): that method splits every
parameter off the rest of the value in turn (`email.message._parseparam`), quadratic in their
number: a value of 40,000 parameters took 0.8 s per call, one of 10 MiB (the header bound)
would take about half an hour, at ingest (search text) and in PREVIEW. `content_charset(leaf)`
is `get_content_charset()` that never raises: given both `charset*` and `charset*0*` it raised
TypeError (email.utils.decode_params sorts None with a number), which failed every sync of the
account (its search text is computed at ingest) and every PREVIEW of the message.
"""

from __future__ import annotations

import codecs
import email.message
import re

__all__ = ["decode_text", "charset_params", "content_charset", "MAX_CHARSET_PIECES"]

# A parameter ends at a ";" where the quotes since its start not preceded by a backslash are
# even (email.message._parseparam's count of '"' minus '\\"')
_PARAM_MARKS = re.compile(r';|(?<!\\)"')
# email.utils.rfc2231_continuation: charset*, charset*0, charset*1* ... (RFC 2231 3, 4)
_CONTINUATION = re.compile(r"(?P<name>\w+)\*(?:[0-9]+\*?)?", re.ASCII)
MAX_CHARSET_PIECES = 100   # RFC 2231 continuations of the charset kept (a name is short)

# Python codecs that are no mail charset (names as `codecs.lookup` spells them)
NOT_MAIL_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape",
                               "raw-unicode-escape"})


def charset_params(value: str) -> str:
    """`value` (a Content-Type) with its type and only the parameters that make the charset
    `get_content_charset()` answers: the first plain `charset` one (email puts plain
    parameters before RFC 2231 ones), else the first `MAX_CHARSET_PIECES` `charset*` pieces.
    Linear in `value`; the same charset for every value with fewer such pieces."""
    pieces, start, quoted = [], 0, False
    for mark in _PARAM_MARKS.finditer(value):
        if mark.group() == '"':
            quoted = not quoted
        elif not quoted:
            pieces.append(value[start:mark.start()])
            start = mark.end()
    pieces.append(value[start:])
    continued: list[str] = []
    for piece in pieces[1:]:
        equals = piece.find("=")
        name = piece[:equals].strip().lower() if equals >= 0 else piece.strip()
        if name.lower() == "charset":
            return pieces[0] + ";" + piece
        found = _CONTINUATION.fullmatch(name)
        if found is not None and found["name"].lower() == "charset" and \
                len(continued) < MAX_CHARSET_PIECES:
            continued.append(piece)
    return ";".join([pieces[0], *continued])


def content_charset(leaf: email.message.Message) -> str | None:
    """`leaf.get_content_charset()`; None (read as UTF-8) where the standard library raises
    (module docstring)."""
    try:
        return leaf.get_content_charset()
    except TypeError:   # RFC 2231 continuations numbered and not: email.utils.decode_params
        return None


def decode_text(data: bytes | memoryview, charset: str | None) -> str:
    """`data` decoded from `charset` (US-ASCII and none: UTF-8), never raising; `data` may be
    a view of a bigger buffer (decoded without a copy of the bytes)."""
    name = charset or "utf-8"
    if name.lower() in ("us-ascii", "ascii"):
        name = "utf-8"   # undeclared 8-bit text is most often UTF-8; ASCII is a subset
    try:
        if codecs.lookup(name).name in NOT_MAIL_CHARSETS:
            name = "utf-8"
        return str(data, name, "replace")
    except (LookupError, ValueError):   # UnicodeError is a ValueError
        return str(data, "utf-8", "replace")
