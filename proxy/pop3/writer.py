"""Serialise POP3 lines and multi-line bodies.

These build our own output, so a CR or LF inside a single-line field is a
bug in the caller and raises ValueError rather than ProtocolError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "CRLF",
    "TERMINATOR_LINE",
    "ok",
    "err",
    "continuation",
    "command",
    "line",
    "dot_stuff",
    "multiline",
]

CRLF = b"\r\n"
#: RFC 1939 §3: the line that ends a multi-line response.
TERMINATOR_LINE = b".\r\n"

_BARE_LF = re.compile(rb"(?<!\r)\n")

BytesLike = bytes | bytearray | memoryview


def _check(part: bytes) -> bytes:
    if b"\r" in part or b"\n" in part:
        raise ValueError("CR or LF inside a POP3 line")
    return part


def _status(indicator: bytes, text: bytes, code: bytes | None) -> bytes:
    parts = [indicator]
    if code:
        # RFC 2449 §8: the response code comes first, in brackets.
        parts.append(b"[" + _check(code) + b"]")
    if text:
        parts.append(_check(text))
    return b" ".join(parts) + CRLF


def ok(text: bytes = b"", code: bytes | None = None) -> bytes:
    """``+OK [code] text`` CRLF (RFC 1939 §3)."""
    return _status(b"+OK", text, code)


def err(text: bytes, code: bytes | None = None) -> bytes:
    """``-ERR [code] text`` CRLF, e.g. ``err(b"Authentication failed", b"AUTH")``."""
    return _status(b"-ERR", text, code)


def continuation(data: bytes = b"") -> bytes:
    """An RFC 5034 §4 server challenge: ``"+" SP base64`` CRLF."""
    return b"+ " + _check(data) + CRLF


def command(name: bytes, *args: bytes) -> bytes:
    """A client command line: keyword and arguments joined by single spaces."""
    return b" ".join(_check(part) for part in (name, *args)) + CRLF


def line(data: bytes) -> bytes:
    """One raw line, e.g. a client SASL response (RFC 5034 §4) or ``b"*"``."""
    return _check(data) + CRLF


def dot_stuff(body: bytes) -> bytes:
    """Prefix a dot to every line starting with one (RFC 1939 §3).

    ``body`` must use CRLF line ends; lines start at offset 0 and after CRLF.
    """
    body = bytes(body)
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..")


def multiline(lines_or_body: BytesLike | Iterable[bytes]) -> bytes:
    """A complete multi-line body: dot-stuffed, then ``.CRLF``.

    Args:
        lines_or_body: either a body (bytes-like) or an iterable of lines
            without terminators.  A body's bare LFs become CRLF and a
            missing final CRLF is added: RFC 1939 §3 lines end in CRLF.
            An empty body gives just the terminator.

    Parsing the result with ``ResponseParser(unstuff=True)`` gives back
    the body exactly, if it already used CRLF line ends throughout.
    """
    if isinstance(lines_or_body, BytesLike):
        body = _BARE_LF.sub(CRLF, bytes(lines_or_body))
        if body and not body.endswith(CRLF):
            body += CRLF
    else:
        body = b"".join(_check(part) + CRLF for part in lines_or_body)
    return dot_stuff(body) + TERMINATOR_LINE
