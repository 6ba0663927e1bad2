"""The decoded text SEARCH TEXT and BODY match against (RFC 3501 6.4.4), computed once per body.

`text_blobs(raw)` returns (header text, body text), both case-mapped with i;unicode-casemap
(RFC 5051, `basesubject.casemap`, as the search needles are): every header field of the
message and of each part in it, with RFC 2047 words decoded, and the text of every text/* and
message/* leaf part with its transfer encoding removed and its charset decoded.

The part tree is `_parts.parse()`'s, which is depth- and count-bounded (`MimeLimits`), not
`email.parser`'s: that one recurses once per nesting level and raised RecursionError on issue
14's poison messages. `email` still does the decoding, one flat leaf part at a time (a
`Message` built from the leaf's own header fields and body bytes, never re-parsed), because it
handles RFC 2047, quoted-printable/base64/uuencode and odd charsets well. A leaf in any other
transfer encoding (7bit, 8bit, binary, none, unknown) is its bytes as they are, which `email`
would give back after two copies of the text (a `str` of the payload, then its bytes again):
those are decoded straight from a view of the message, so a 50 MB APPEND holds the message and
its text, not four copies.
"""

from __future__ import annotations

import email.errors
import email.header
import email.message
import unicodedata

from ._parts import DEFAULT_LIMITS, MimeLimits, Part, parse
from .basesubject import casemap_stream_safe, stream_safe
from .charsets import charset_params, content_charset, decode_text
from .rfc2047 import decode_header as _decode_words

__all__ = ["text_blobs", "decode_header", "header_items"]


def text_blobs(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> tuple[str, str]:
    """(header text, body text), decoded and case-folded (see the module docstring)."""
    headers: list[str] = []
    bodies: list[str] = []
    stack = [parse(raw, limits)]
    while stack:   # pre-order, children left to right, as email's walk() goes
        part = stack.pop()
        for name, value in part.headers:
            words = _text(value)
            # RFC 2047 2: no "=?", no encoded word, and decode_header() gives the text back
            # unchanged; `email` builds a Header per field for it (~5 us a field)
            headers.append(f"{_text(name)}: {decode_header(words) if '=?' in words else words}")
        if part.children:
            stack.extend(reversed(part.children))
        elif not part.opaque:
            text = _leaf_text(raw, part)
            if text is not None:
                bodies.append(text)
    cap = len(raw) + TEXT_SLACK
    return bounded_casemap("\n".join(headers), cap), bounded_casemap("\n".join(bodies), cap)


# Case mapping (RFC 5051: titlecase, then NFKD) may lengthen text: Hangul syllables (3 UTF-8
# bytes) become 2-3 jamo, "½" (2 bytes) three characters, but U+FDFA (3 bytes) becomes 18, so a
# POP3 message of 100 MB of it (gateway.limits.max_message_bytes) was a 600-million character
# search text, a 3.2 GB analysis blob (a 5 MB one measured 163 MB, 367 MB of peak memory).
# A search text is cut at the message's length in characters (plus TEXT_SLACK): mail that
# does not expand past its own bytes, all of it but such characters, is never cut; a SEARCH of
# text past the cut in such a message does not find it (Dovecot, which maps per search, would).
TEXT_SLACK = 64 * 1024
_MAP_CHUNK = 64 * 1024   # characters case-mapped at a time by bounded_casemap


def bounded_casemap(text: str, cap: int) -> str:
    """`casemap(text)`, cut to `cap` characters, without mapping more than a chunk past them.
    Chunks end before a character that is a starter and whose decomposition starts with one
    (canonical reordering, NFKD's only step across characters, never crosses a starter), so the
    chunks' mappings joined are the whole text's mapping."""
    if text.isascii():
        return text[:cap].upper()
    text = stream_safe(text)   # (a run of marks has no starter to end a chunk before)
    out: list[str] = []
    size = start = 0
    while start < len(text) and size < cap:
        end = min(start + _MAP_CHUNK, len(text))
        while end < len(text) and not _starts_anew(text[end]):
            end += 1
        piece = casemap_stream_safe(text[start:end])
        out.append(piece)
        size += len(piece)
        start = end
    joined = "".join(out)
    return joined if len(joined) <= cap else joined[:cap]


def _starts_anew(char: str) -> bool:
    return unicodedata.combining(char) == 0 and (
        char.isascii() or unicodedata.combining(unicodedata.normalize("NFKD", char)[:1] or "a") == 0)


def _text(value: bytes) -> str:
    # Raw 8-bit header bytes are read as UTF-8 (invalid sequences as U+FFFD), as Dovecot does.
    return value.decode("utf-8", "replace")


# the transfer encodings `email.message.Message.get_payload(decode=True)` decodes; it hands
# back any other one's payload unchanged
_DECODED_BY_EMAIL = ("quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue")


def _leaf_text(raw: bytes, part: Part) -> str | None:
    leaf = email.message.Message()
    for name, value in part.headers:
        if name.lower() == b"content-type" and not value.strip() and part.is_mime:
            return None   # an empty type is no text for Dovecot (BODYSTRUCTURE says "" "")
        if name.lower() in (b"content-type", b"content-transfer-encoding"):
            text = value.decode("ascii", "surrogateescape")   # the charset read in linear time:
            leaf[name.decode("ascii", "surrogateescape")] = (   # charsets.charset_params
                charset_params(text) if name.lower() == b"content-type" else text)
    if leaf.get_content_maintype() not in ("text", "message"):
        return None
    charset = content_charset(leaf)
    body = memoryview(raw)[part.header_end:part.end]   # no copy (raw may be a 50 MB literal)
    if str(leaf.get("content-transfer-encoding", "")).lower() not in _DECODED_BY_EMAIL:
        return decode_text(body, charset)   # what email would decode, without its two copies
    leaf.set_payload(str(body, "ascii", "surrogateescape"))
    payload = leaf.get_payload(decode=True)
    del leaf   # and its copy of the encoded text, before the decoded text is made
    if not isinstance(payload, bytes):  # None when there is nothing to decode
        payload = b""
    return decode_text(payload, charset)


def header_items(part: email.message.Message) -> list[tuple[str, str]]:
    """A part's header fields as text. Raw 8-bit bytes in a header are read as UTF-8 (invalid
    sequences as U+FFFD), as Dovecot does: `Message.items()` of compat32 would turn every such
    byte into U+FFFD, so CHARSET UTF-8 searches for "Grüße" in an unencoded header never matched."""
    out = []
    for name, value in part.raw_items():
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        else:
            value = str(value)
        out.append((name, value))
    return out


def decode_header(value) -> str:
    if isinstance(value, email.header.Header):
        value = str(value)
    try:
        return str(email.header.make_header(_decode_words(value)))
    # MessageError covers HeaderParseError and CharsetError (an encoded-word whose charset
    # name holds a non-ASCII byte, found by the MIME fuzz target)
    except (LookupError, UnicodeError, ValueError, email.errors.MessageError):
        return value
