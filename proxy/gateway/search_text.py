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

from ._parts import DEFAULT_LIMITS, MimeLimits, Part, parse
from .basesubject import casemap
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
    return casemap("\n".join(headers)), casemap("\n".join(bodies))


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
