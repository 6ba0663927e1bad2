"""A receive buffer: one bytearray plus a read offset.

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
        self.data = bytearray()
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
        if self.pos:
            del self.data[: self.pos]
            self.pos = 0
        self.data += data

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
