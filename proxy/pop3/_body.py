"""Multi-line response bodies: find the end fast, optionally un-stuff.

Theory of operation
===================

RFC 1939 §3 frames a multi-line response as CRLF-terminated lines followed
by a line holding a single dot::

    +OK 120 octets\\r\\n        <- status line, consumed by ResponseParser
    line one\\r\\n
    ..dot-stuffed line\\r\\n    <- a body line that began with "."
    .\\r\\n                     <- terminator

Every byte of a RETR passes through here, so the body is never split into
lines in Python.  Instead:

1. **Find the end at C speed.**  Past the first line, the terminator is
   the 5-byte sequence ``CRLF . CRLF`` whose first CRLF ends the last body
   line.  ``..x`` (stuffed) never matches it, since after ``CRLF .`` comes
   a second dot, not CR.  The body's *first* line has no CRLF before it in
   the buffer (the status line's was consumed with it), so ``_first_line``
   checks for ``.CRLF`` there: an empty body is ``+OK\\r\\n.\\r\\n``.
   ``find_terminator`` looks for the dot with ``find(b".")`` (``memchr``,
   ~50x faster than CPython's search for the 5-byte needle over base64 or
   binary-ish mail, where dots are rare) and checks the bytes around each
   one that starts a line (the byte before it a LF: a dot inside a line
   costs a subscript, no call); after ``_DOT_CHECKS`` dots that are not
   the terminator (prose) it hands the rest to one ``find(TERMINATOR)``.

2. **Hold back a tail, emit the rest.**  When no terminator is found, the
   buffer may end with the start of one split across chunks.  We keep the
   longest suffix that is a proper prefix of ``CRLF.CRLF`` (``\\r``,
   ``\\r\\n``, ``\\r\\n.``, ``\\r\\n.\\r``: at most 4 bytes) and emit the
   rest as one :class:`MultilineData`: one event per received chunk.  Any
   terminator starting before the held tail would lie wholly in the buffer
   and have been found, so the next search can start at the tail.

3. **The terminator's first CRLF stays in the data.**  When found at
   ``idx``, we emit up to ``idx + 2`` (the last line's CRLF), set
   ``line_start`` and report :class:`MultilineEnd` on the next call, when
   ``_first_line`` sees ``.CRLF``.  So a body of one empty line
   (``\\r\\n``) is distinguishable from an empty body.

4. **Un-stuffing (``unstuff=True``).**  RFC 1939 §3: "If so and if octets
   other than CRLF follow, the first octet of the line (the termination
   octet) is stripped away."  A line start inside an emitted chunk is
   always preceded by its CRLF *in the same chunk*, because step 2 never
   emits a chunk ending in ``\\r``, ``\\r\\n`` or ``\\r\\n.``; so one
   ``chunk.replace(b"\\r\\n.", b"\\r\\n")`` decodes it.  We strip after
   ``CRLF`` any dot, not just the ``..`` pair, as the RFC says (servers
   must stuff, so both agree on valid input).  The body's first line is
   again the special case: ``_first_line`` drops its dot by moving the
   read offset.

5. **Relay mode (``keep_bodies=False``).**  A relay forwards the raw bytes
   it received and only needs to know where each body ends: the same search
   runs, but nothing is copied and no MultilineData is emitted.

End of input is the caller's business: ``next_event`` returns
``NEED_DATA`` and ``ResponseParser`` turns that into ``ConnectionClosed``
after EOF; a held-back tail of a truncated body is not emitted.
"""

from __future__ import annotations

from ._buffer import ReceiveBuffer
from ._util import NEED_DATA
from .events import MultilineData, MultilineEnd

__all__ = ["BodyReader", "TERMINATOR", "find_terminator", "held_back"]

#: RFC 1939 §3: end of the last body line, then the "." line.
TERMINATOR = b"\r\n.\r\n"
_TERMINATOR_LINE = TERMINATOR[2:]
_HOLD_PREFIXES = tuple(TERMINATOR[:k] for k in (4, 3, 2, 1))
_HOLD_LAST_BYTES = frozenset(TERMINATOR[:4])
_DOT_CHECKS = 8  # dots looked at one by one before the 5-byte search takes over


class BodyReader:
    """Reads one multi-line body from a :class:`ReceiveBuffer`."""

    __slots__ = ("_unstuff", "_keep", "line_start")

    def __init__(self, *, unstuff: bool, keep: bool = True) -> None:
        self._unstuff = unstuff
        self._keep = keep  # False: a relay that forwards the raw bytes only needs the end
        self.line_start = True   # at the body's first line or past the terminator's CRLF

    def next_event(self, buf: ReceiveBuffer) -> MultilineData | MultilineEnd | object:
        """Return the next MultilineData / MultilineEnd, or NEED_DATA."""
        while True:
            if self.line_start:
                event = self._first_line(buf)
                if event is not None:
                    return event
            data, pos = buf.data, buf.pos
            idx = find_terminator(data, pos)
            if idx >= 0:
                stop = idx + 2
                self.line_start = True
            else:
                stop = len(data) - held_back(data, pos)
                if stop <= pos:
                    return NEED_DATA
            if self._keep:
                break
            buf.pos = stop  # skipped, not copied
            if idx < 0:
                return NEED_DATA
        chunk = bytes(data[pos:stop])
        buf.pos = stop
        if self._unstuff:
            chunk = chunk.replace(b"\r\n.", b"\r\n")
        return MultilineData(chunk)

    def _first_line(self, buf: ReceiveBuffer) -> MultilineEnd | object | None:
        """At a line start with no CRLF before it: terminator, or undecided?"""
        head = bytes(buf.data[buf.pos : buf.pos + 3])
        if head == _TERMINATOR_LINE:
            buf.pos += 3
            return MultilineEnd()
        if _TERMINATOR_LINE.startswith(head):  # "", "." or ".\r": wait
            return NEED_DATA
        self.line_start = False
        if self._unstuff and head[:1] == b".":
            buf.pos += 1  # RFC 1939 §3: strip the stuffed dot of line one
        return None


def find_terminator(data: bytes | bytearray, pos: int) -> int:
    """``data.find(TERMINATOR, pos)``, faster where dots are rare (see step 1 above)."""
    dot = data.find(b".", pos + 2)   # a terminator starting at i has its dot at i + 2
    for _ in range(_DOT_CHECKS):
        if dot < 0:
            return -1
        # a dot inside a line (a header's domain) is passed with a subscript, no call
        if data[dot - 1] == 10 and data.startswith(TERMINATOR, dot - 2):
            return dot - 2
        dot = data.find(b".", dot + 1)
    # Many dots (prose): no terminator starts before dot - 2 (each earlier dot was checked).
    return -1 if dot < 0 else data.find(TERMINATOR, dot - 2)


def held_back(data: bytes | bytearray, pos: int) -> int:
    """Length of the longest suffix of data[pos:] that may start a terminator."""
    if not data or data[-1] not in _HOLD_LAST_BYTES:
        return 0
    for prefix in _HOLD_PREFIXES:
        if data.endswith(prefix, pos):
            return len(prefix)
    return 0
