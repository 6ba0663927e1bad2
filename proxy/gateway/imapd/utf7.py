"""Modified UTF-7 mailbox names (RFC 3501 5.1.3).

Printable US-ASCII (0x20-0x7e) stands for itself, except "&", which is written "&-". Everything
else is UTF-16BE, base64-encoded with "," instead of "/" and no padding, between "&" and "-".
The store keeps names as Python `str`; the wire carries these bytes.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["encode", "decode", "Utf7Error"]


class Utf7Error(ValueError):
    """Bytes that are not a valid modified UTF-7 mailbox name."""


def _b64(chunk: str) -> bytes:
    return base64.b64encode(chunk.encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")


def encode(name: str) -> bytes:
    """A mailbox name as sent on the wire."""
    out = bytearray()
    pending: list[str] = []
    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            if pending:
                out += b"&" + _b64("".join(pending)) + b"-"
                pending = []
            out += b"&-" if char == "&" else char.encode("ascii")
        else:
            pending.append(char)
    if pending:
        out += b"&" + _b64("".join(pending)) + b"-"
    return bytes(out)


def decode(wire: bytes) -> str:
    """A wire mailbox name as text. Raises Utf7Error for 8-bit bytes or bad shifts."""
    out, pos = [], 0
    while pos < len(wire):
        byte = wire[pos]
        if byte > 0x7E or byte < 0x20:
            raise Utf7Error("mailbox name is not 7-bit printable")
        if byte != 0x26:  # "&"
            out.append(chr(byte))
            pos += 1
            continue
        end = wire.find(b"-", pos + 1)
        if end < 0:
            raise Utf7Error("unterminated &-shift in mailbox name")
        chunk = wire[pos + 1:end]
        if not chunk:
            out.append("&")
        else:
            padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
            try:
                text = base64.b64decode(padded, validate=True).decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError):
                raise Utf7Error("bad base64 in mailbox name") from None
            if encode(text) != b"&" + chunk + b"-":   # non-canonical forms are refused
                raise Utf7Error("non-canonical modified UTF-7")
            out.append(text)
        pos = end + 1
    return "".join(out)
