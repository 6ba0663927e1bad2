"""Client side: turn server bytes into StatusLine / Continuation /
MultilineData / MultilineEnd events."""

from __future__ import annotations

from collections import deque

from ._body import TERMINATOR, BodyReader, find_terminator, held_back
from ._buffer import ReceiveBuffer
from ._grammar import parse_response_line
from ._limits import DEFAULT_LIMITS, Limits
from ._util import NEED_DATA, ProtocolError, line_too_long, unexpected_response
from .events import ConnectionClosed, Continuation, MultilineEnd, StatusLine

__all__ = ["ResponseParser"]


class ResponseParser:
    """Sans-IO parser for the server half of a POP3 connection.

    Whether a ``+OK`` carries a body depends on the command it answers, so
    the caller queues one expectation per command sent, in order
    (``expect(is_multiline(cmd.name, cmd.args))``); pipelined commands
    (RFC 2449 §6.6) are answered in order, so a FIFO suffices.

    * The greeting (RFC 1939 §4) is one single-line expectation queued at
      construction; pass ``greeting=False`` to parse from mid-session.
    * ``-ERR`` is always single-line (RFC 1939 §3) and consumes its
      expectation like ``+OK`` does.
    * A ``+ `` continuation (RFC 5034 §4 SASL challenge) consumes none: the
      AUTH command stays outstanding until its final status line.
    * A line arriving with nothing expected is fatal "unexpected_response".

    Every :class:`ProtocolError` raised here is fatal (framing with the
    server is lost) and is raised again by later calls.
    """

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, *, unstuff: bool = False, greeting: bool = True,
        keep_bodies: bool = True,
    ) -> None:
        self._limits = limits
        self._unstuff = unstuff
        self._keep_bodies = keep_bodies  # False: no MultilineData, only MultilineEnd (relays)
        self._buf = ReceiveBuffer()
        self._expected: deque[bool] = deque([False] if greeting else [])
        self._body: BodyReader | None = None
        self._error: ProtocolError | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Expectations not yet answered by a status line (a body in progress counts none)."""
        return len(self._expected)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    def expect(self, multiline: bool) -> None:
        """Queue the framing of the answer to one command sent upstream."""
        self._expected.append(multiline)

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; ``b""`` means the server closed its side."""
        self._buf.feed(data)

    def whole_answer(self, data: bytes) -> bool | None:
        """``data`` is a whole chunk: when nothing is buffered and it is exactly the whole
        answer to the next command expected (a ``+OK``/``-ERR`` line ending in CRLF, and after
        a ``+OK`` to a multi-line command its body up to the first terminator, RFC 1939 3),
        take it and that expectation and return whether it was ``+OK``, with no events; else
        None and nothing taken (``receive_data`` it then)."""
        buf = self._buf
        if (self._body is not None or buf.pos != len(buf.data) or buf.eof or not self._expected
                or self._error is not None):
            return None
        eol = data.find(b"\n", 0, self._limits.max_response_line)
        if eol < 4 or data[eol - 1] != 13:   # (a status line is 3 bytes at least)
            return None
        # RFC 1939 3: the indicator, then SP and text or the line's end (parse_response_line);
        # servers send it in upper case, which is compared without an upper() call
        head = data[:3]
        ok = (head == b"+OK" or head.upper() == b"+OK") and (data[3] == 32 or eol == 4)
        if not ok and not (data[:4].upper() == b"-ERR" and (eol == 5 or data[4] == 32)):
            return None   # (a continuation, or what parsing must refuse)
        if ok and self._expected[0]:   # the body's first terminator must end the chunk
            end = len(data) - 5
            if data[end:] != TERMINATOR or find_terminator(data, eol - 1) != end:
                return None
        elif eol != len(data) - 1:
            return None
        self._expected.popleft()
        return ok

    def body_chunk(self, data: bytes) -> bool | None:
        """``data`` is a whole chunk, inside a relayed body (``keep_bodies=False``) past its
        first line, with nothing buffered: when the body's terminator ends the chunk exactly,
        take it and return True (the answer is complete); when the chunk holds no terminator
        and ends with no byte that could start one, take it and return False; else None and
        nothing taken (``receive_data`` it then). Nothing buffered means the last chunk ended
        with no prefix of ``CRLF.CRLF`` held back, so no terminator spans the two (RFC 1939
        3; _body.py step 2)."""
        body, buf = self._body, self._buf
        if (body is None or body.line_start or self._keep_bodies or buf.pos != len(buf.data)
                or buf.eof or self._error is not None):
            return None
        end = find_terminator(data, 0)
        if end < 0:
            if held_back(data, 0):
                return None
            return False
        if end != len(data) - 5:   # (more follows the body: the parser takes it)
            return None
        self._body = None
        return True

    def next_event(self) -> object:
        """Return the next event, or :data:`NEED_DATA`.

        Returns ConnectionClosed after EOF once complete input is used up;
        inside a body it comes without MultilineEnd (the body is truncated).

        Raises:
            ProtocolError: "line_too_long", "bad_response" or
                "unexpected_response"; always fatal.
        """
        if self._error is not None:
            raise self._error
        if self._closed:
            return ConnectionClosed()
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> object:
        if self._body is not None:
            event = self._body.next_event(self._buf)
            if event is NEED_DATA:
                return self._need_data()
            if isinstance(event, MultilineEnd):
                self._body = None
            return event
        limit = self._limits.max_response_line
        line = self._buf.take_line(limit)
        if line is None:
            if self._buf.is_overlong(limit):
                raise line_too_long(fatal=True)
            return self._need_data()
        return self._on_line(line)

    def _on_line(self, line: bytes) -> StatusLine | Continuation:
        if not self._expected:
            raise unexpected_response()
        event = parse_response_line(line)
        if isinstance(event, StatusLine):
            multiline = self._expected.popleft()
            if event.ok and multiline:
                self._body = BodyReader(unstuff=self._unstuff, keep=self._keep_bodies)
        return event

    def _need_data(self) -> ConnectionClosed | object:
        if self._buf.eof:
            self._closed = True
            return ConnectionClosed()
        return NEED_DATA
