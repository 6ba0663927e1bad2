"""RFC 2047 encoded words of a header value, found and decoded in linear time.

`decode_header(text)` returns exactly what the standard library's
`email.header.decode_header(text)` returns for a str (the (chunk, charset) pairs SEARCH, SORT
and THREAD decode header values with, and the same `HeaderParseError` for a bad base64 word),
without its costs that grow faster than the input, each reachable with one hostile header
field of a message (a field may hold up to `gateway.limits.mime_max_header_bytes`, 10 MiB):

* its encoded-word regex (`email.header.ecre`, ``=\\?([^?]*?)\\?([qQbB])\\?(.*?)\\?=``) tries
  each "=?" in turn and, when no "?=" follows on the line, scans to the line's end from each:
  ``"=?a?q?x" * 20000`` (140 KB) took 54 s to search and as long to split;
* it takes a line's parts with `list.pop(0)` and drops blanks between encoded words with
  `del list[i]`: quadratic in the words of a line;
* it joins a run of words of one charset with `bytes +=`: quadratic in the run's length.

Theory of operation: `_words(text)` walks the "=?" candidates left to right as the regex
does. At a candidate the charset runs to the next "?" (it cannot hold one), then one of
"qQbB" and "?" must follow, then the encoded text runs to the first "?=" that follows, and
must hold no line feed (the regex's "." does not match one; the charset may). The positions of
the next "?=" and the next line feed are searched once and kept while the scan is still before
them, so each byte of the value is scanned a bounded number of times. Once no "?=" follows, no
later candidate can match either, and the scan ends.
"""

from __future__ import annotations

import binascii
import email.base64mime
import email.quoprimime
from collections.abc import Iterator
from email.errors import HeaderParseError

__all__ = ["decode_header"]

_ENCODINGS = "qQbB"


def _words(text: str) -> Iterator[tuple[int, int, str, str, str]]:
    """(start, end, charset, encoding, encoded) of each encoded word in `text`, in order, as
    `email.header.ecre.finditer` finds them (module docstring)."""
    closer = newline = -2          # the next "?=" / line feed at or after the scan (-1: none)
    at = text.find("=?")
    while at >= 0:
        mark = text.find("?", at + 2)   # the charset's end: before the next "=?"'s "?" or at it
        encoding = text[mark + 1:mark + 2] if mark >= 0 else ""
        if len(encoding) != 1 or encoding not in _ENCODINGS or text[mark + 2:mark + 3] != "?":
            at = text.find("=?", at + 1)
            continue
        start = mark + 3
        if closer != -1 and closer < start:
            closer = text.find("?=", start)
        if closer < 0:
            return
        if newline != -1 and newline < start:
            newline = text.find("\n", start)
        if 0 <= newline < closer:   # no match from here: a later candidate may begin past it
            at = text.find("=?", at + 1)
            continue
        yield at, closer + 2, text[at + 2:mark], encoding, text[start:closer]
        at = text.find("=?", closer + 2)


def _split(line: str) -> Iterator[tuple[str, str | None, str | None]]:
    """`email.header.decode_header`'s triplets of one line: (text, None, None) for plain text
    (the first stripped of leading blanks, empty ones left out), (encoded, encoding, charset)
    for an encoded word, both lower-cased."""
    pos = 0
    for start, end, charset, encoding, encoded in _words(line):
        plain = line[pos:start] if pos else line[:start].lstrip()
        if plain:
            yield plain, None, None
        yield encoded, encoding.lower(), charset.lower()
        pos = end
    plain = line[pos:] if pos else line.lstrip()
    if plain:
        yield plain, None, None


def _decoded(encoded: str, encoding: str | None) -> str | bytes:
    if encoding is None:
        return encoded
    if encoding == "q":
        return email.quoprimime.header_decode(encoded)
    missing = len(encoded) % 4   # Postel's law, as the standard library: pad
    if missing:
        encoded += "==="[:4 - missing]
    try:
        return email.base64mime.decode(encoded)
    except binascii.Error:
        raise HeaderParseError("Base64 decoding error") from None


def decode_header(text: str) -> list[tuple[str | bytes, str | None]]:
    """`email.header.decode_header(text)` for a str, in linear time (module docstring)."""
    if next(_words(text), None) is None:
        return [(text, None)]
    words = [word for line in text.splitlines() for word in _split(line)]
    # a blank between two encoded words is dropped (RFC 2047 6.2), decided on the list as split
    kept = [word for n, word in enumerate(words)
            if not (0 < n < len(words) - 1 and words[n + 1][1] and words[n - 1][1]
                    and word[0].isspace())]
    runs: list[tuple[list[bytes], str | None]] = []
    for encoded, encoding, charset in kept:
        word = _decoded(encoded, encoding)
        data = word.encode("raw-unicode-escape") if isinstance(word, str) else word
        if runs and runs[-1][1] == charset:
            runs[-1][0].append(data)
        else:
            runs.append(([data], charset))
    return [((b" " if charset is None else b"").join(pieces), charset) for pieces, charset in runs]
