"""FETCH PREVIEW (RFC 8970): a short plain-text preview of a message, computed like Dovecot's
message-snippet.c so clients see the same text from both servers.

Theory of operation: one part is chosen, as Dovecot 2.3 chooses it (index-mail.c): a message
with no Content-Type or a text/* one is its own part; a multipart/alternative gives its first
text/plain child (or one without Content-Type), else its text/html one, else any text/* one; any
other multipart gives the first child (depth first) that qualifies; anything else has no preview.
The chosen part's body is decoded (transfer encoding and charset, by the `email` package, as
`search_text` does) and fed, character by character, to a small state machine:

* whitespace runs become one space, leading and trailing whitespace is dropped, NUL and the
  byte-order mark are skipped;
* a line that starts with ">" is quoted text: it goes to a second buffer that is used, prefixed
  with ">", only when the part has no unquoted text at all;
* text/html (and application/xhtml+xml) is first reduced to text, simply: comments and the
  content of style and script elements dropped, blockquote content marked as quoted, every
  other tag a space, entities decoded (`html.unescape`).

The preview is at most `MAX_CHARS` characters (RFC 8970 3.1: at most 256; Dovecot uses 200).
Only the first `MAX_INPUT` decoded characters of the part are looked at, so the cost is bounded
whatever the message.
"""

from __future__ import annotations

import email.message
import html
import re

from ._parts import DEFAULT_LIMITS, MimeLimits, Part, fill_headers, parse, table_to_parts
from ._rfc822 import Rfc822
from .charsets import charset_params, content_charset, decode_text

__all__ = ["preview", "MAX_CHARS"]

MAX_CHARS = 200          # characters of preview (RFC 8970 3.1: MUST NOT exceed 256)
MAX_INPUT = 64 * 1024    # decoded characters of one part looked at; the rest cannot matter much
_HTML_TYPES = (b"text/html", b"application/xhtml+xml")
_DROPPED = re.compile(r"<!--.*?(?:-->|$)|<(style|script)\b.*?(?:</\1\s*>|$)",
                      re.IGNORECASE | re.DOTALL)
_BLOCKQUOTE = re.compile(r"<blockquote\b[^>]*>(.*?)(?:</blockquote\s*>|$)", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>?")
_ASCII_SPACE = " \t\n\r\v\f"   # Dovecot's i_isspace(); U+00A0 and friends are text
_SPACE = frozenset(_ASCII_SPACE)


def preview(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS, parts: list | None = None) -> str:
    """The preview text of `raw` ("" when it has no text part with any text). `parts` is the
    cached part table (`mime.MimeInfo.parts`): with it the message is not scanned again, only
    the headers of the parts looked at are read."""
    if parts is None:
        root = parse(raw, limits)
    else:
        root = fill_headers(raw, table_to_parts(parts), in_multipart=False, limits=limits)
    part = _choose(raw, root, limits)
    text = _part_text(raw, part) if part is not None else None
    return _snippet(text) if text else ""


def _content_type(part: Part) -> tuple[bytes, bytes | None] | None:
    """(type, subtype) lower-cased as BODYSTRUCTURE reads them; None without a Content-Type."""
    value = part.header(b"content-type") if part.is_mime else None
    if value is None:
        return None
    p = Rfc822(value)
    p.skip_lwsp()
    mtype, _ = p.content_type()
    main, slash, sub = mtype.lower().partition(b"/")
    return main, sub if slash else None


def _choose(raw: bytes, root: Part, limits: MimeLimits) -> Part | None:
    """Dovecot's index_mail_find_first_text_mime_part(), with an explicit stack."""
    stack = [root]
    while stack:
        part = stack.pop()
        ctype = _content_type(part)
        if ctype is None or ctype[0] == b"text":
            return part
        if ctype[0] != b"multipart" or part.opaque:
            continue
        for child in part.children:
            fill_headers(raw, child, in_multipart=True, limits=limits)
        if ctype[1] == b"alternative":   # text/plain > text/html > text/*
            texts = [(c, _content_type(c)) for c in part.children]
            texts = [(c, t) for c, t in texts if t is None or t[0] == b"text"]
            for rank in (lambda t: t is None or t[1] in (None, b"plain"), lambda t: t[1] == b"html",
                         lambda t: True):
                found = next((c for c, t in texts if rank(t)), None)
                if found is not None:
                    return found
            continue
        stack.extend(reversed(part.children))
    return None


def _part_text(raw: bytes, part: Part) -> str | None:
    """The part's decoded text, HTML reduced; None when it is not a text part."""
    leaf = email.message.Message()
    for name, value in part.headers:
        if name.lower() in (b"content-type", b"content-transfer-encoding"):
            text = value.decode("ascii", "surrogateescape")   # the charset read in linear time:
            leaf[name.decode("ascii", "surrogateescape")] = (   # charsets.charset_params
                charset_params(text) if name.lower() == b"content-type" else text)
    declared = part.header(b"content-type")
    ctype = b"text/plain"
    if declared is not None:   # Dovecot's decoder reads the type itself: "text" alone is not text/
        p = Rfc822(declared)
        p.skip_lwsp()
        ctype = p.content_type()[0].lower()
    if not ctype.startswith(b"text/") and ctype not in _HTML_TYPES:
        return None
    # From the raw bytes: email's Message.get() answers a Header object, not a str, for a value
    # with 8-bit bytes or NULs in it (a hostile message crashed PREVIEW on .strip()).
    cte = (part.header(b"content-transfer-encoding") or b"7bit").strip().lower()
    if cte not in (b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable"):
        return ""   # Dovecot's decoder skips a body it cannot decode
    end = min(part.end, part.header_end + 4 * MAX_INPUT)   # enough bytes for MAX_INPUT characters
    leaf.set_payload(raw[part.header_end:end].decode("ascii", "surrogateescape"))
    payload = leaf.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    text = decode_text(data, content_charset(leaf))[:MAX_INPUT]
    return _html_text(text) if ctype in _HTML_TYPES else text


def _html_text(text: str) -> str:
    text = _DROPPED.sub(" ", text)
    text = _BLOCKQUOTE.sub(lambda m: "\n>" + _TAG.sub(" ", m.group(1)) + "\n", text)
    return html.unescape(_TAG.sub(" ", text))


def _snippet(text: str) -> str:
    """Dovecot's snippet state machine over one part's text (see the module docstring)."""
    plain: list[str] = []
    quoted: list[str] = []
    left = {id(plain): MAX_CHARS, id(quoted): MAX_CHARS - 1}   # -1: the ">" put before quoted text
    newline, space = True, False
    target = plain
    chars = iter(text)
    for char in chars:
        if newline:
            newline = False
            if char == ">":
                target = quoted
                char = next(chars, "")
                if not char:
                    break
            else:
                target = plain
        if char in ("\0", "\ufeff"):
            continue
        if char in _SPACE:
            space = space or bool(target)
            newline = char == "\n"
            continue
        if left[id(target)] == 0:
            continue
        left[id(target)] -= 1
        if space:
            if left[id(target)] == 0:   # no trailing space
                if target is plain:
                    break
                continue
            target.append(" ")
            space = False
            left[id(target)] -= 1
        target.append(char)
        if left[id(plain)] == 0:
            break
    if plain:
        return "".join(plain).lstrip(_ASCII_SPACE)
    return ">" + "".join(quoted).lstrip(_ASCII_SPACE) if quoted else ""
