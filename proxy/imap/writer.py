"""Encoders for IMAP wire syntax (RFC 3501 §9 / RFC 9051 §9).

Every function returns ready-to-send ``bytes``.  Functions that produce a
line reject CR, LF and NUL in free text (``ValueError``) so that peer data
can never inject a line.
"""

from __future__ import annotations

import re

__all__ = [
    "astring",
    "quoted",
    "literal",
    "literal_plus",
    "format_command",
    "tagged",
    "untagged",
    "continuation",
]

# ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ] (RFC 3501 §9).
_ATOM_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
# QUOTED-CHAR: 7-bit TEXT-CHAR; NUL is not a CHAR.
_QUOTABLE_RE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_LINE_BREAKERS = re.compile(rb"[\r\n\x00]")


def astring(value: bytes) -> bytes:
    """Encode ``value`` as an atom, a quoted string or a literal.

    Atom when non-empty, all ATOM-CHAR and not ``NIL`` (quoted to stay
    unambiguous where an nstring is expected); quoted when 7-bit without
    CR/LF/NUL; otherwise a *synchronizing* literal ``{n}\\r\\n`` + value.
    For a literal the caller must send up to and including the CRLF, wait
    for the server's ``+`` continuation, then send the rest (RFC 3501 §7.5);
    use :func:`literal_plus` when the server has LITERAL+ (RFC 7888).
    """
    if _ATOM_RE.fullmatch(value) and value.upper() != b"NIL":
        return value
    if _QUOTABLE_RE.fullmatch(value):
        return quoted(value)
    return literal(value)


def quoted(value: bytes) -> bytes:
    """Encode ``value`` as a quoted string, escaping ``\\`` and ``"``.

    Raises:
        ValueError: ``value`` holds CR, LF, NUL or 8-bit bytes.
    """
    if not _QUOTABLE_RE.fullmatch(value):
        raise ValueError("value cannot be quoted")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: bytes) -> bytes:
    """A synchronizing literal ``{n}\\r\\n`` + value (RFC 3501 §4.3)."""
    return b"{%d}\r\n" % len(value) + value


def literal_plus(value: bytes) -> bytes:
    """A non-synchronizing literal ``{n+}\\r\\n`` + value (RFC 7888 §3)."""
    return b"{%d+}\r\n" % len(value) + value


def _check_line(*parts: bytes) -> None:
    for part in parts:
        if _LINE_BREAKERS.search(part):
            raise ValueError("CR, LF or NUL in line text")


def format_command(tag: bytes, name: bytes, *args: bytes) -> bytes:
    """``tag SP name *(SP arg) CRLF``; ``args`` are already encoded.

    Encoded literals contain CRLF, so only tag and name are checked.
    """
    _check_line(tag, name)
    return b" ".join((tag, name, *args)) + b"\r\n"


def tagged(tag: bytes, status: bytes, text: bytes, code: bytes | None = None) -> bytes:
    """``tag SP status SP ["[" code "]" SP] text CRLF``.

    ``code`` includes its arguments, e.g. ``b"CAPABILITY IMAP4rev1"``.
    """
    _check_line(tag, status, text, code or b"")
    code_part = b"[" + code + b"] " if code else b""
    return b"%s %s %s%s\r\n" % (tag, status, code_part, text)


def untagged(text: bytes) -> bytes:
    """``* text CRLF``."""
    _check_line(text)
    return b"* " + text + b"\r\n"


def continuation(text: bytes = b"") -> bytes:
    """``+ text CRLF`` (RFC 9051 §7.5: continue-req); ``+ \\r\\n`` when empty."""
    _check_line(text)
    return b"+ " + text + b"\r\n"
