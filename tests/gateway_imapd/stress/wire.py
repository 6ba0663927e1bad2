"""The stress tester's IMAP client side: one blocking socket, whole responses with their literals,
and a small response tokenizer (atoms, quoted strings, literals, NIL, parenthesized lists).

Written for the tester (issue 13): it sees every untagged response exactly as sent, which no
client library guarantees, and it never tolerates what a server should not send.
"""

from __future__ import annotations

import re
import socket

_LITERAL_END = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Str(bytes):
    """A quoted string or a literal (an atom stays plain `bytes`)."""


class WireError(Exception):
    pass


class StressError(Exception):
    """The server did what no server may (the run ends with it as an error)."""


class Bye(StressError):
    """The server said BYE (allowed only while a scratch mailbox is selected, steps.py)."""


class Conn:
    """A blocking connection reading one whole response at a time."""

    def __init__(self, host: str, port: int, timeout: float):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise WireError("connection closed by the server")
        self.buf += data

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line, self.buf = self.buf[:end + 2], self.buf[end + 2:]
        return line

    def _exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def response(self, timeout: float | None = None) -> bytes:
        """One response (untagged, tagged or continuation), literals inlined, without final CRLF.
        Raises socket.timeout when `timeout` passes before a response starts."""
        if timeout is not None and b"\r\n" not in self.buf:
            self.sock.settimeout(timeout)
            try:
                self._fill()
            finally:
                self.sock.settimeout(self.timeout)
        out = b""
        while True:
            line = self._line()
            out += line
            m = _LITERAL_END.search(line)
            if m is None:
                return out[:-2]
            out += self._exact(int(m.group(1)))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def tokens(data: bytes, pos: int = 0) -> list:
    """Parse `data[pos:]` into a list of values: bytes atoms (a section such as
    `BODY[HEADER.FIELDS (A B)]<0>` is one atom), `Str` strings and literals, None for NIL, lists."""
    stack: list[list] = [[]]
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c == b" ":
            pos += 1
        elif c == b"(":
            stack.append([])
            pos += 1
        elif c == b")":
            if len(stack) == 1:
                raise WireError(f"unbalanced ')' at {pos}")
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == b'"':
            pos += 1
            out = bytearray()
            while data[pos:pos + 1] != b'"':
                if pos >= n:
                    raise WireError("unterminated string")
                if data[pos:pos + 1] == b"\\":
                    pos += 1
                out += data[pos:pos + 1]
                pos += 1
            stack[-1].append(Str(bytes(out)))
            pos += 1
        elif c == b"{":
            m = re.compile(rb"\{(\d+)\+?\}\r\n").match(data, pos)
            if m is None:
                raise WireError(f"bad literal at {pos}")
            size = int(m.group(1))
            stack[-1].append(Str(data[m.end():m.end() + size]))
            pos = m.end() + size
        else:
            start = pos
            while pos < n and data[pos:pos + 1] not in (b" ", b"(", b")", b"\r", b"\n"):
                if data[pos:pos + 1] == b"[":   # a section: up to its "]" (may hold spaces, parens)
                    close = data.find(b"]", pos)
                    if close < 0:
                        raise WireError("unterminated section")
                    pos = close
                pos += 1
            if pos == start:
                raise WireError(f"unexpected byte {data[pos:pos + 1]!r} at {pos}")
            atom = data[start:pos]
            stack[-1].append(None if atom.upper() == b"NIL" else atom)
    if len(stack) != 1:
        raise WireError("unbalanced '('")
    return stack[0]


def fetch_items(values: list) -> dict[bytes, object]:
    """`[b"UID", b"5", b"FLAGS", [...]]` -> {b"UID": b"5", b"FLAGS": [...]} (names upper-cased)."""
    if len(values) % 2:
        raise WireError("odd number of FETCH items")
    return {bytes(values[i]).upper(): values[i + 1] for i in range(0, len(values), 2)}


def seqset(numbers: list[int]) -> bytes:
    """Ascending numbers -> a compact sequence set: [1, 2, 3, 7] -> b"1:3,7"."""
    out, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = n
    out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(out)
