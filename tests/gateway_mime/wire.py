"""Exact-bytes reading of IMAP responses, for the differential tests.

imaplib hides literals and quoting, so the tests send commands on imaplib's socket and
read the raw reply here; `fetch_items()` splits one ``* n FETCH (...)`` into its items
without changing a byte of the values.
"""

from __future__ import annotations

import re

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


def read_response(read_line, read_exact, tag: bytes) -> list[bytes]:
    """Untagged responses (each with its literals inlined) up to the tagged one, which
    is returned last."""
    out, cur = [], b""
    while True:
        line = read_line()
        if not line:
            raise EOFError("connection closed")
        cur += line
        m = _LITERAL.search(line)
        if m:
            cur += read_exact(int(m.group(1)))
            continue
        out.append(cur)
        if cur.startswith(tag + b" "):
            return out
        cur = b""


def _skip_value(data: bytes, pos: int) -> int:
    """End offset of the IMAP value starting at `pos`."""
    c = data[pos:pos + 1]
    if c == b"~":   # literal8 (RFC 3516)
        return _skip_value(data, pos + 1)
    if c == b'"':
        pos += 1
        while data[pos:pos + 1] != b'"':
            pos += 2 if data[pos:pos + 1] == b"\\" else 1
        return pos + 1
    if c == b"{":
        m = re.compile(rb"\{(\d+)\}\r\n").match(data, pos)
        return m.end() + int(m.group(1))
    if c == b"(":
        pos += 1
        while data[pos:pos + 1] != b")":
            if data[pos:pos + 1] == b" ":
                pos += 1
                continue
            pos = _skip_value(data, pos)
        return pos + 1
    m = re.compile(rb"[^ ()\r\n\[]*(\[[^\]]*\](<\d+>)?)?").match(data, pos)
    return m.end()


def fetch_items(response: bytes) -> tuple[int, dict[bytes, bytes]]:
    """``* 3 FETCH (UID 7 BODY[] {5}\\r\\nhello)`` -> (3, {b"UID": b"7", b"BODY[]": b"{5}\\r\\nhello"})."""
    m = re.compile(rb"\* (\d+) FETCH \(").match(response)
    if not m:
        raise ValueError(f"not a FETCH response: {response[:80]!r}")
    pos, items = m.end(), {}
    while response[pos:pos + 1] != b")":
        if response[pos:pos + 1] == b" ":
            pos += 1
            continue
        name_end = _skip_value(response, pos)
        name = response[pos:name_end]
        value_end = _skip_value(response, name_end + 1)
        items[name] = response[name_end + 1:value_end]
        pos = value_end
    return int(m.group(1)), items


def string_value(value: bytes) -> bytes | None:
    """Decode one IMAP string/literal/NIL value to its bytes."""
    if value == b"NIL":
        return None
    if value.startswith(b"{") or value.startswith(b"~{"):
        return value[value.index(b"\n") + 1:]
    if value.startswith(b'"'):
        return re.sub(rb'\\(.)', rb"\1", value[1:-1])
    return value
