"""Sans-IO IMAP parsing: the framing state machine shared by both parsers.

``CommandParser`` (server side, ``_command_parser``) and ``ResponseParser``
(client side, ``_response_parser``) subclass ``BaseParser`` and add only the
parsing of a message's first line part.

Theory of operation
-------------------
An IMAP command or response is a *message*: a line part, and while a line part
ends in a literal marker (``{n}``, ``{n+}``, ``~{n}``), ``n`` bytes of literal
payload followed by another line part (RFC 3501 §4.3, RFC 9051 §4.3).  The
parser is a small state machine over that framing (``_State``):

``LINE``
    Waiting for a message's first line part.  The head (tag, name, status,
    number, response code) is split off cheaply; a ``RawLine`` is returned
    instead if ``expect_line()`` was called.
``LITERAL``
    ``_remaining`` payload bytes taken by count, one slice per call: each a
    ``LiteralData`` event (a 50 MB APPEND is never buffered), or with
    ``collect_literals`` written as it arrives into one buffer (bounded by
    ``max_literal``) that becomes the ``Literal`` in ``args``: the received
    chunks are not kept, and the payload is copied once into that buffer and
    once into the ``Literal``. CPython builds an instance of a ``bytes``
    subclass only by copying one finished buffer, so a literal read in several
    chunks costs two copies while ``Literal`` is one (the gateway tells
    literals from strings by that type); the copy is transient (the buffer is
    let go at once), below an APPEND's peak (``bench/append_memory.py``).
``CONT``
    Waiting for the line part that follows a literal.
``SKIP_LITERAL`` / ``SKIP_CONT`` / ``SKIP_LINE``
    Resynchronisation after an error (``_resync``).

Only the framing runs on every byte: ``bytes.find`` for line ends, a check of
the last bytes of a line for a literal marker, slicing for payloads (``_framer``).
Arguments are tokenised only with ``parse_args=True``.  A relay's common chunk,
one whole plain line at rest, skips even that: ``plain_line``/``tagged_line``
(the subclasses') read its head with one regex and count it consumed.

Events come out one per ``next_event()`` call from a small queue filled by one
processing step (e.g. ``CommandStart`` then ``LiteralStart``).  A step never
reads past the current message's line part, so the caller can call
``expect_line()`` after ``Command(IDLE)`` or ``Command(AUTHENTICATE)`` even if
the next line is already buffered.  A message's final event (``Command``,
``TaggedResponse``, ``UntaggedResponse``) is emitted when its last line part
has arrived; ``UntaggedResponse`` thus follows its literals' events.

Errors and resynchronisation
----------------------------
``ProtocolError`` is raised after any events queued before it; what is dropped
and where parsing resumes is ``_resync``'s (the steps of the SKIP states and
the error paths, a mixin of ``BaseParser``).

End of input
------------
``receive_data(b"")`` marks EOF.  Complete messages already buffered are still
returned; then ``ConnectionClosed`` is returned on every call.  A partial
message at EOF (a line without its line end, a literal cut short) is silently
dropped and not reported; data received after EOF is ignored.
"""

from __future__ import annotations

import io

from . import events as ev
from ._errors import ProtocolError
from ._framer import OVERLONG, ReceiveBuffer
from ._limits import DEFAULT_LIMITS, Limits
from ._lines import LiteralMarker, find_literal, is_tag
from ._resync import RESYNC_FACTOR, Resync
from ._resync import State as _State
from ._tokens import Literal, LiteralRef, Token, Tokenizer
from .events import NEED_DATA, NeedData

__all__ = ["BaseParser", "NEED_DATA", "RESYNC_FACTOR"]


_HEAD_PEEK = 128  # enough of a line to see "tag NAME " (max_id_line)


class BaseParser(Resync):
    """Framing state machine shared by both parsers (errors and resynchronisation: Resync)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, collect_literals: bool = False,
                 parse_args: bool = False) -> None:
        self._limits = limits
        self._collect = collect_literals
        self._parse_args = parse_args
        self._buf = ReceiveBuffer()
        self._state = _State.LINE
        # a list, not a deque: it holds one to three events, and an empty deque costs 600 bytes
        self._events: list[ev.Event] = []
        self._pending_error: ProtocolError | None = None
        self._raw_next = False
        self._tag: bytes | None = None  # tag of the message being parsed
        self._tokens: Tokenizer | None = None
        self._literal: LiteralMarker | None = None
        self._remaining = self._collected = self._skipped = 0  # literal bytes left; collected
        self._sink: io.BytesIO | None = None  # the literal being collected
        self._fatal_error: ProtocolError | None = None
        # After a non-fatal error in a message's first line part, where it began (else None) and
        # where parsing resumed once `resynchronising` ends (offsets as ReceiveBuffer.consumed).
        self.rejected_at: int | None = None
        self.resumed_at = 0
        self._name = b""  # CommandParser: name of the command being parsed
        self._head: tuple[bytes, int | None, bytes] = (b"", None, b"")  # ResponseParser: (name, number, raw)

    # -- public API ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data`` from the peer (``b""``: EOF); never parses."""
        self._buf.feed(data)

    def next_event(self) -> ev.Event | NeedData:
        """Return the next event, or ``NEED_DATA``.

        Raises:
            ProtocolError: bad input (resynchronisation: see above).  Anything else is a bug.
        """
        while True:
            if self._events:
                return self._events.pop(0)
            if self._pending_error is not None:
                error, self._pending_error = self._pending_error, None
                raise error
            try:
                progressed = getattr(self, self._state._value_)()
            except ProtocolError as error:
                if not self._events:
                    raise
                self._pending_error = error
                continue
            if not progressed:
                if self._buf.eof:
                    return ev.ConnectionClosed()
                self._buf.drop_consumed()
                return NEED_DATA

    def expect_line(self) -> None:
        """Return the next line as ``RawLine`` instead of parsing it, from the next message
        boundary on: AUTHENTICATE responses (RFC 9051 §6.2.2), IDLE's DONE (RFC 2177)."""
        self._raw_next = True

    @property
    def in_literal(self) -> bool:
        """True while literal payload bytes are being read or skipped."""
        return self._state in (_State.LITERAL, _State.SKIP_LITERAL)

    @property
    def literal_left(self) -> int:
        """Payload bytes of the literal being read that the parser has not received (0 outside
        a literal's payload, or while any input is buffered or events are queued): what a
        relay may move past the parser (`pass_literal`)."""
        if (self._state is not _State.LITERAL or self._sink is not None or self._events
                or len(self._buf)):
            return 0
        return self._remaining

    def pass_literal(self, size: int) -> None:
        """``size`` bytes of the current literal's payload went by without entering the parser
        (at most ``literal_left``): counted as consumed, as ``next_event`` would have."""
        if not 0 < size <= self.literal_left:
            raise RuntimeError("pass_literal() past the literal's payload")
        self._remaining -= size
        self._buf.pass_bytes(size)

    @property
    def resynchronising(self) -> bool:
        """True while the rest of a rejected message is being skipped."""
        return self._state in (_State.SKIP_LITERAL, _State.SKIP_CONT, _State.SKIP_LINE)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """True between messages with nothing pending (a relay may insert a line there)."""
        return (self._state is _State.LINE and not len(self._buf) and not self._events
                and self._sink is None)

    def passable(self) -> bool:
        """True when `_pass` would count a whole line within the limit as consumed (at rest,
        nothing buffered, no EOF, outside ``parse_args``): the state a relay's fused step
        (relay/engine_imap.py) needs to do the same itself (`pass_line_at_rest`). It stays
        true until the parser is fed or asked for an event."""
        buf = self._buf
        return (self._state is _State.LINE and not self._events and self._sink is None
                and not self._raw_next and self._pending_error is None and not self._parse_args
                and buf._pos >= len(buf._data) and not buf.eof)

    @property
    def max_line(self) -> int:
        return self._limits.max_line

    def pass_lines_at_rest(self, size: int, last: int) -> None:
        """`_pass` of whole lines of `size` bytes in all, the last of `last` bytes, once
        `passable()` said so before each and each was within `max_line`."""
        buf = self._buf
        buf._base += size
        buf._line = buf._pos - last

    def _pass(self, size: int) -> bool:
        """Count ``size`` bytes, one whole line that the subclass read itself, as consumed;
        False (nothing done) unless the parser is at rest and the line within its limit."""
        if (size > self._limits.max_line or self._state is not _State.LINE or self._events
                or self._sink is not None or self._raw_next or self._pending_error is not None):
            return False
        return self._buf.pass_line(size)   # (and nothing buffered, no EOF)

    def take_unconsumed(self) -> bytes:
        """Hand the bytes not yet parsed to another parser (e.g. pre-login to relay); only
        between messages (RuntimeError in the middle of one)."""
        if self._state is not _State.LINE or self._events or self._sink is not None:
            raise RuntimeError("take_unconsumed() in the middle of a message")
        return self._buf.take_all()

    # -- hooks for subclasses -----------------------------------------------

    def _start_message(self, line: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def _message_event(self, args: tuple[Token, ...]) -> ev.Event:  # pragma: no cover
        raise NotImplementedError

    # -- steps: each returns False when it needs more input -------------------

    def _step_line(self) -> bool:
        line = self._take_line()
        if line is None:
            return False
        if self._raw_next:
            self._raw_next = False
            self._events.append(ev.RawLine(line))
        else:
            self._start_message(line)
        return True

    def _step_cont(self) -> bool:
        line = self._take_line()
        if line is None:
            return False
        self._continue_message(line, 0, find_literal(line))
        return True

    def _step_literal(self) -> bool:
        if self._remaining:
            chunk = self._buf.take(self._remaining, False)
            if chunk is None:
                return False
            self._remaining -= len(chunk)
            if self._sink is not None:
                self._sink.write(chunk)
            elif not self._collect:
                self._events.append(ev.LiteralData(chunk))
            if self._remaining:
                return True
        self._end_literal()
        return True

    # -- message assembly ------------------------------------------------------

    def _line_limit(self) -> int:
        """``max_line``, or ``max_id_line`` for a line part of an ID command."""
        limits = self._limits   # (max_line + 1 bytes buffered hold no overlong line: no peek)
        if (limits.max_id_line <= limits.max_line or self._raw_next
                or len(self._buf) <= limits.max_line + 1):
            return limits.max_line
        if self._state is _State.CONT:
            name = self._name
        else:  # the head of a command not yet parsed: "tag ID ..."
            head = self._buf.peek(_HEAD_PEEK).split(b" ", 2)
            name = head[1] if len(head) == 3 else b""
        return limits.max_id_line if name.upper() == b"ID" else limits.max_line

    def _take_line(self) -> bytes | None:
        """Take a line part; on overlong input switch to SKIP_LINE and raise."""
        line = self._buf.take_line(self._line_limit())
        if line is not OVERLONG:
            return line
        tag = self._tag
        if self._state is _State.LINE and not self._raw_next:
            # Look for the tag only where it is buffered however the input was segmented (the
            # first max_line + 1 bytes), so that the reply does not depend on segmentation.
            head = self._buf.peek(min(256, self._limits.max_line + 1))
            sp = head.find(b" ")
            tag = head[:sp] if sp > 0 and is_tag(head[:sp]) else None
        self.rejected_at = self._buf.consumed if self._state is _State.LINE else None
        self._raw_next = False
        self._reset_message()
        self._state = _State.SKIP_LINE
        self._skipped = 0
        raise ProtocolError("line_too_long", "Line too long", tag=tag)

    def _begin_message(self, tag: bytes | None) -> None:
        self._tag = tag
        self._tokens = Tokenizer(self._limits) if self._parse_args else None

    def _continue_message(self, line: bytes, pos: int, literal: LiteralMarker | None) -> None:
        """Tokenise a line part, then start its literal or finish the message."""
        if self._tokens is not None:
            end = literal.start if literal is not None else len(line)
            try:
                self._tokens.feed(line, pos, end, literal is not None)
            except ProtocolError as error:
                self._fail(error, literal)
        if literal is None:
            self._finish_message()
        else:
            self._begin_literal(literal)

    def _begin_literal(self, literal: LiteralMarker) -> None:
        limits = self._limits
        self._collected += literal.size if self._collect else 0   # held together: bounded so
        if literal.size > limits.max_literal or self._collected > limits.max_literal:
            self._fail(ProtocolError("literal_too_big", "Literal too big"), literal)
        if (self._peer_waits_for_sync and not literal.synchronizing
                and literal.size > limits.max_nonsync_literal):
            # RFC 7888 §4 (LITERAL-): a tagged BAD; the payload is skipped to stay in sync
            error = ProtocolError("nonsync_literal_too_big", "Non-synchronizing literal too big")
            self._fail(error, literal)
        self._literal = literal
        self._remaining = literal.size
        self._sink = io.BytesIO() if self._collect and self._tokens is not None else None
        self._state = _State.LITERAL
        self._events.append(ev.LiteralStart(literal.size, literal.synchronizing, literal.binary))

    def _end_literal(self) -> None:
        if self._tokens is not None:
            if self._sink is not None:   # getvalue() hands over its buffer without a copy
                value: bytes | LiteralRef = Literal(self._sink.getvalue())
                self._sink = None
            else:
                assert self._literal is not None  # set by _start_literal
                value = LiteralRef(self._literal.size)
            self._tokens.add_literal(value)
        self._state = _State.CONT

    def _finish_message(self) -> None:
        args: tuple[Token, ...] = ()
        if self._tokens is not None:
            try:
                args = self._tokens.finish()
            except ProtocolError as error:
                self._fail(error, None)
        self._events.append(self._message_event(args))
        self._reset_message()
        self._state = _State.LINE

    def _reset_message(self) -> None:
        self._tag, self._tokens, self._literal = None, None, None
        self._sink, self._collected = None, 0
