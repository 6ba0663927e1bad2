"""Server side: turn client bytes into Command / RawLine events."""

from __future__ import annotations

from ._buffer import ReceiveBuffer
from ._grammar import PLAIN_COMMAND, parse_command_line
from ._limits import DEFAULT_LIMITS, Limits
from ._util import NEED_DATA, line_too_long
from .events import Command, ConnectionClosed, RawLine

__all__ = ["CommandParser"]


class CommandParser:
    """Sans-IO parser for the client half of a POP3 connection.

    Usage: ``receive_data(chunk)`` (``b""`` at EOF), then call
    ``next_event()`` until it returns :data:`NEED_DATA` or
    :class:`ConnectionClosed`.  Pipelined commands (RFC 2449 §6.6) simply
    come out one after another.

    Errors are never fatal here: after a :class:`ProtocolError` the parser
    has dropped the offending line (or will drop the rest of an overlong
    line as it arrives) and the caller may reply ``exc.reply()`` and carry
    on.  Budgets for repeated errors belong to the caller.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = ReceiveBuffer()
        self._skipping = False  # discarding the tail of an overlong line
        self._raw_next = False  # expect_line() was called
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    @property
    def at_rest(self) -> bool:
        """Nothing buffered or being skipped, no raw line expected: a command starts next."""
        return not len(self._buf) and not self._skipping and not self._raw_next \
            and not self._closed

    def plain_line(self, data: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        """``data`` is a whole chunk: when the parser is at rest and it is one plain transaction
        command line (``_grammar.PLAIN_COMMAND``), return the ``(name, args)`` its
        Command would have, without buffering it; else None and nothing taken."""
        buf = self._buf   # (at_rest and not at EOF, spelt out: the relay's hot path)
        if (len(data) > self._limits.max_command_line or buf.pos != len(buf.data) or buf.eof
                or self._skipping or self._raw_next or self._closed):
            return None
        m = PLAIN_COMMAND.fullmatch(data)
        if m is None:
            return None
        name, args = m.groups()
        return name, tuple(args.split())

    def take_unconsumed(self) -> bytes:
        """Hand the bytes not yet parsed to another parser (e.g. pre-login to relay)."""
        rest = bytes(self._buf.data[self._buf.pos:])
        self._buf.data, self._buf.pos = b"", 0
        return rest

    def expect_line(self) -> None:
        """Return the next line as :class:`RawLine` instead of a Command.

        For RFC 5034 §4 SASL exchanges: call it after sending each ``+ ``
        challenge.  The client's ``*`` (cancel) arrives as ``RawLine(b"*")``.
        A ``line_too_long`` error clears the expectation.
        """
        self._raw_next = True

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; ``b""`` means the client closed its side."""
        self._buf.feed(data)

    def next_event(self) -> Command | RawLine | ConnectionClosed | object:
        """Return the next event, or :data:`NEED_DATA`.

        Raises:
            ProtocolError: "line_too_long" or "bad_syntax", never fatal.
        """
        if self._closed:
            return ConnectionClosed()
        if self._skipping:
            if not self._buf.skip_line():
                return self._need_data()
            self._skipping = False
        limit = self._limits.max_command_line
        line = self._buf.take_line(limit)
        if line is None:
            if self._buf.is_overlong(limit):
                self._drop_overlong_line()
                raise line_too_long(fatal=False)
            return self._need_data()
        if self._raw_next:
            self._raw_next = False
            return RawLine(line)
        return parse_command_line(line)

    def _drop_overlong_line(self) -> None:
        # Stay in sync (STYLE §7.9): drop through the line's end, now or as
        # it arrives, and report the line once.
        self._raw_next = False
        self._skipping = not self._buf.skip_line()

    def _need_data(self) -> ConnectionClosed | object:
        if self._buf.eof:  # a partial last line is dropped
            self._closed = True
            return ConnectionClosed()
        return NEED_DATA
