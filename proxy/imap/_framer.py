"""Receive buffer: line and literal framing at C speed.

Theory of operation
-------------------
The buffer is ``self._data`` (``bytes`` or ``bytearray``) plus a read offset
``self._pos``.  When all data has been consumed, the next ``feed()`` simply
adopts the caller's ``bytes`` object: no copy.  Only when unconsumed bytes
remain (a partial line) is a ``bytearray`` built and appended to, after
dropping the consumed prefix; that remainder is bounded by ``max_line``.

Lines are found with ``find(b"\\n", scan)`` where ``scan`` remembers how far
an earlier search got, so a line trickling in one byte at a time is not
rescanned.  Literal payloads are taken by count: one slice per call.  Slices
of a ``bytes`` buffer are handed out as zero-copy ``memoryview``s (safe since
``bytes`` is immutable); slices of a ``bytearray`` are copied, because a
resize while a view is exported would raise ``BufferError``.

Bare LF is accepted as a line end, as Dovecot does; a CR before the LF is
removed, a lone CR elsewhere stays part of the line.

``consumed`` counts every byte taken or skipped since creation (``_base`` is
what was consumed of buffers already dropped), so a caller can name a place
in the stream; ``last_line_at`` is where the last line taken began.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ReceiveBuffer", "OVERLONG"]


class _Overlong(enum.Enum):
    OVERLONG = "OVERLONG"

    def __repr__(self) -> str:
        return self.value


#: Returned by ``take_line`` when the line part exceeds ``max_line``.
OVERLONG: Final = _Overlong.OVERLONG

_LF = b"\n"
_CR = 13


class ReceiveBuffer:
    """Buffered input with line and counted-chunk extraction."""

    __slots__ = ("_data", "_pos", "_scan", "_base", "_line", "eof", "scanned")

    def __init__(self) -> None:
        self._data: bytes | bytearray = b""
        self._pos = 0
        self._scan = 0
        self._base = 0  # bytes consumed from earlier buffers (see ``consumed``)
        self._line = 0  # where the last line taken began, in ``_data``
        self.eof = False
        self.scanned = 0  # bytes searched for a line end, in total: the framing's work

    @property
    def consumed(self) -> int:
        """Bytes taken or skipped since creation."""
        return self._base + self._pos

    @property
    def last_line_at(self) -> int:
        """Where the last line returned by ``take_line`` began, counted like ``consumed``."""
        return self._base + self._line

    def __len__(self) -> int:
        return len(self._data) - self._pos

    def feed(self, data: bytes) -> None:
        """Append ``data``; ``b""`` marks EOF.  Data after EOF is dropped."""
        if not data:
            self.eof = True
            return
        if self.eof:
            return
        if type(data) is not bytes:
            data = bytes(data)
        buf, pos = self._data, self._pos
        self._base += pos
        self._line -= pos
        if pos >= len(buf):
            self._data = data
            self._pos = self._scan = 0
            return
        if isinstance(buf, bytearray):
            if pos:
                del buf[:pos]
            buf += data
        else:
            new = bytearray(buf[pos:])
            new += data
            self._data = new
        self._scan -= pos
        self._pos = 0

    def pass_line(self, size: int) -> bool:
        """When nothing is buffered and EOF is not marked, ``size`` bytes that never entered the
        buffer go by as one whole line: they count as consumed, and as the last line taken;
        else False and nothing done."""
        pos = self._pos
        if pos < len(self._data) or self.eof:
            return False
        self._base += size
        self._line = pos - size
        return True

    def pass_bytes(self, size: int) -> None:
        """``size`` bytes that never entered the buffer went by (a relay spliced a literal's
        payload past it): they count as consumed. Only with nothing buffered."""
        self._base += size
        self._line -= size

    def drop_consumed(self) -> None:
        """Let go of a chunk that has been read to its end (an idle session keeps no bytes)."""
        pos = self._pos
        if pos and pos >= len(self._data):
            self._base += pos   # offsets (consumed, line_start) stay as they were
            self._line -= pos
            self._data, self._pos, self._scan = b"", 0, 0

    def take_all(self) -> bytes:
        """Remove and return everything buffered."""
        rest = bytes(self._data[self._pos:])
        self._base += len(self._data)
        self._line -= len(self._data)
        self._data, self._pos, self._scan = b"", 0, 0
        return rest

    def take_line(self, max_line: int) -> bytes | _Overlong | None:
        """Remove and return the next line without its line end.

        Returns None if no line end is buffered yet, ``OVERLONG`` (consuming
        nothing) if the line is, or would become, longer than ``max_line``.
        """
        buf, start = self._data, self._pos
        lf = buf.find(_LF, self._scan)
        self.scanned += (len(buf) if lf < 0 else lf + 1) - self._scan
        if lf < 0:
            self._scan = len(buf)
            # +1: a trailing CR may belong to the line end.
            return OVERLONG if len(buf) - start > max_line + 1 else None
        end = lf - 1 if lf > start and buf[lf - 1] == _CR else lf
        if end - start > max_line:
            return OVERLONG
        self._pos = self._scan = lf + 1
        self._line = start
        line = buf[start:end]
        return line if type(line) is bytes else bytes(line)

    def take(self, limit: int, copy: bool) -> bytes | memoryview | None:
        """Remove and return up to ``limit`` bytes; None if nothing is buffered.

        With ``copy=False`` the result may be a ``memoryview`` (zero-copy).
        """
        buf, pos = self._data, self._pos
        end = min(pos + limit, len(buf))
        if end <= pos:
            return None
        self._pos = end
        if self._scan < end:
            self._scan = end
        if type(buf) is bytes:
            if pos == 0 and end == len(buf):
                return buf
            return buf[pos:end] if copy else memoryview(buf)[pos:end]
        with memoryview(buf) as view:
            return bytes(view[pos:end])

    def skip(self, limit: int) -> int:
        """Discard up to ``limit`` bytes; return how many were discarded."""
        end = min(self._pos + limit, len(self._data))
        skipped = end - self._pos
        self._pos = end
        if self._scan < end:
            self._scan = end
        return skipped

    def skip_line(self, keep: int) -> tuple[bytes | None, int]:
        """Discard input up to and including the next line end.

        Returns ``(tail, discarded)``.  ``tail`` is the last ``keep`` bytes of
        the line (line end removed), or None when no line end is buffered yet;
        then all but the last ``keep`` bytes (and a CR after them) are discarded, so that the tail is
        still available once the line end arrives.
        """
        buf, start = self._data, self._pos
        lf = buf.find(_LF, self._scan)
        self.scanned += (len(buf) if lf < 0 else lf + 1) - self._scan
        if lf < 0:
            # A CR last may be the line end's first half: keep `keep` bytes before it, so that the
            # tail is the same however the line was segmented.
            held = keep + 1 if buf[-1:] == b"\r" else keep
            new_pos = max(start, len(buf) - held)
            self._pos = new_pos
            self._scan = len(buf)
            return None, new_pos - start
        end = lf - 1 if lf > start and buf[lf - 1] == _CR else lf
        tail = bytes(buf[max(start, end - keep) : end])
        self._pos = self._scan = lf + 1
        return tail, lf + 1 - start

    def peek(self, size: int) -> bytes:
        """Return up to ``size`` buffered bytes without consuming them."""
        return bytes(self._data[self._pos : self._pos + size])
