"""A receive buffer: bytes or a bytearray, plus a read offset.

When everything buffered has been consumed, ``feed`` adopts the caller's
``bytes`` as they are (no copy: a relay's RETR chunks are searched for the
body's end and forwarded, never kept); only a remainder (a line or
terminator split across chunks) is copied into a bytearray and appended to.
Consumed bytes are dropped lazily, on the next :meth:`ReceiveBuffer.feed`
(``del bytearray[:n]`` is cheap in CPython: it moves the start pointer).
The body reader in ``_body.py`` works on :attr:`data` and :attr:`pos`
directly, to search with ``bytes.find`` and cut large slices.
"""

from __future__ import annotations

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """Bytes received but not yet consumed.

    Attributes:
        data: the underlying buffer; bytes before :attr:`pos` are consumed.
        pos: read offset into :attr:`data`.
        eof: True once ``feed(b"")`` was called.
    """

    __slots__ = ("data", "pos", "eof")

    def __init__(self) -> None:
        self.data: bytes | bytearray = b""
        self.pos = 0
        self.eof = False

    def __len__(self) -> int:
        return len(self.data) - self.pos

    def feed(self, data: bytes) -> None:
        """Append ``data``; ``b""`` marks end of input.

        Raises:
            RuntimeError: data after EOF (a caller bug, not a peer error).
        """
        if self.eof:
            raise RuntimeError("received data after EOF")
        if not data:
            self.eof = True
            return
        buf, pos = self.data, self.pos
        if pos >= len(buf):   # all consumed: adopt the chunk
            self.data, self.pos = (data if type(data) is bytes else bytes(data)), 0
            return
        if isinstance(buf, bytearray):
            if pos:
                del buf[:pos]
        else:
            buf = bytearray(memoryview(buf)[pos:])
        buf += data
        self.data, self.pos = buf, 0

    def take_line(self, limit: int) -> bytes | None:
        """Consume one line of at most ``limit`` bytes, terminator included.

        Returns the line without its LF and without one CR before it (a bare
        LF is accepted as a terminator), or None if no LF occurs within the
        first ``limit`` bytes; then :meth:`is_overlong` tells why.
        """
        end = self.data.find(b"\n", self.pos, self.pos + limit)
        if end < 0:
            return None
        line = bytes(self.data[self.pos : end])
        self.pos = end + 1
        return line[:-1] if line.endswith(b"\r") else line

    def is_overlong(self, limit: int) -> bool:
        """True if the pending line already exceeds ``limit`` (call after take_line)."""
        return len(self) >= limit

    def skip_line(self) -> bool:
        """Drop bytes through the next LF; True if it was found, else drop all."""
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            self.pos = len(self.data)
            return False
        self.pos = end + 1
        return True
