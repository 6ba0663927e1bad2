"""IMAP string output as Dovecot writes it (``imap-quote.c``): `nstring` (NIL, "quoted" or a
{literal}), `nstring_nolf` (line breaks removed) and `string_for_humans` (white space squeezed),
used for ENVELOPE and BODYSTRUCTURE (RFC 3501 4.3, 4.5, 7.4.2)."""

from __future__ import annotations

__all__ = ["nstring", "nstring_nolf", "string_for_humans"]


def _literal(value: bytes) -> bytes:
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    """NIL, "quoted" or {literal}: literal for CR, LF, 8-bit or many escapes. 8-bit text is a
    literal in UTF8=ACCEPT/IMAP4rev2 sessions too (RFC 6855 3 allows, not requires, quoted
    UTF-8): byte for byte what Dovecot sends (tests/gateway_imapd/test_utf8_accept.py)."""
    if value is None:
        return b"NIL"
    escapes = value.count(b'"') + value.count(b"\\")
    if escapes > 4 or b"\r" in value or b"\n" in value or not value.isascii():
        return _literal(value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def nstring_nolf(value: bytes | None) -> bytes:
    """nstring() with line breaks removed (a space kept between unfolded lines)."""
    if value is None or (b"\r" not in value and b"\n" not in value):
        return nstring(value)
    out = bytearray()
    for i, c in enumerate(value):
        if c not in (0x0D, 0x0A):
            out.append(c)
        elif i + 1 < len(value) and value[i + 1] not in b" \t\r\n":
            out.append(0x20)
    return nstring(bytes(out))


def string_for_humans(value: bytes) -> bytes:
    """TABs/CR/LF to spaces, runs of spaces squeezed, ends trimmed.
    Unchanged input is sent "quoted" as is; anything changed goes out as a literal."""
    if not value:
        return b'""'
    modify, out, last_lwsp = False, bytearray(), True
    for c in value:
        if c in (0x0D, 0x0A, 0x09, 0x20):
            if c != 0x20 or last_lwsp:
                modify = True
            if not last_lwsp:
                out.append(0x20)
            last_lwsp = True
        else:
            if c >= 0x80 or c in (0x22, 0x5C):
                modify = True
            out.append(c)
            last_lwsp = False
    if last_lwsp and out:
        out.pop()
        modify = True
    if not modify:
        return b'"' + value + b'"'
    if not out:
        return b'""'
    return _literal(bytes(out))
