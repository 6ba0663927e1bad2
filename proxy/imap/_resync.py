"""Errors and resynchronisation of the IMAP framing parser: ``Resync``, a mixin of
``_parser.BaseParser`` (the framing), and the parser's states.

Theory of operation
-------------------
``ProtocolError`` is raised after any events queued before it.  A non-fatal
error leaves the parser resynchronised:

* The rest of the bad message is dropped.  If the bad line part announced a
  literal the peer will send anyway (a client's ``{n+}`` or any literal from
  a server), its payload is skipped by count and following line parts of the
  same message are skipped too (``SKIP_LITERAL``/``SKIP_CONT``).  A client
  that announced a synchronising literal waits for ``+``, gets a BAD instead
  and sends nothing (RFC 3501 §7.5), so parsing resumes at the next line.
* An overlong line part raises ``line_too_long`` as soon as more than
  ``max_line`` bytes are buffered without a line end; the parser then discards
  input up to the next LF (``SKIP_LINE``), keeping only the last 32 bytes to
  spot a literal marker.  If more than ``max_line * RESYNC_FACTOR`` bytes
  are discarded, a second, *fatal* ``line_too_long`` is raised.

Fatal errors (``fatal=True``, ``reply_status=b"BYE"``): the resync budget
above ran out, or a literal that the peer sends without waiting (client
``{n+}``, server literal) exceeds ``max_literal``, so skipping it could take
forever.  After a fatal error every ``next_event()`` raises it again.
"""

from __future__ import annotations

import enum

from ._errors import ProtocolError
from ._framer import OVERLONG, ReceiveBuffer
from ._limits import Limits
from ._lines import LiteralMarker, find_literal

__all__ = ["RESYNC_FACTOR", "Resync", "State"]


#: An overlong line may be discarded up to ``max_line * RESYNC_FACTOR`` bytes, then fatal.
RESYNC_FACTOR = 16
_TAIL_KEEP = 32  # longest literal marker: "~{" + 20 digits + "+}"


class State(enum.Enum):
    """Each value names the step method run in that state (getattr on `_value_`: fast)."""

    LINE = "_step_line"
    CONT = "_step_cont"
    LITERAL = "_step_literal"
    SKIP_LITERAL = "_step_skip_literal"
    SKIP_CONT = "_step_skip_cont"
    SKIP_LINE = "_step_skip_line"
    FAILED = "_step_failed"


class Resync:
    """The SKIP states' steps and the error paths; the attributes are BaseParser's."""

    # Does a rejected message's literal arrive anyway? Servers never wait; clients for sync ones
    _peer_waits_for_sync = False
    _buf: ReceiveBuffer
    _limits: Limits
    _state: State
    _tag: bytes | None
    _remaining: int
    _skipped: int
    _fatal_error: ProtocolError | None
    rejected_at: int | None
    resumed_at: int

    def _reset_message(self) -> None:  # pragma: no cover (BaseParser's)
        raise NotImplementedError

    # -- steps: each returns False when it needs more input -------------------

    def _step_skip_literal(self) -> bool:
        skipped = self._buf.skip(self._remaining)
        self._remaining -= skipped
        if not self._remaining:
            self._state = State.SKIP_CONT
            return True
        return skipped > 0

    def _step_skip_cont(self) -> bool:
        line = self._buf.take_line(self._limits.max_line)
        if line is OVERLONG:
            self._state = State.SKIP_LINE
            self._skipped = 0
            return True
        if line is None:
            return False
        self._resync(find_literal(line))
        return True

    def _step_skip_line(self) -> bool:
        tail, discarded = self._buf.skip_line(_TAIL_KEEP)
        self._skipped += discarded
        if self._skipped > self._limits.max_line * RESYNC_FACTOR:
            self._fatal(ProtocolError("line_too_long", "Line too long"))
        if tail is None:
            return False
        self._resync(find_literal(tail))
        return True

    def _step_failed(self) -> bool:
        raise self._fatal_error  # type: ignore[misc]  # (set with FAILED)

    # -- errors ----------------------------------------------------------------

    def _fail(self, error: ProtocolError, literal: LiteralMarker | None) -> None:
        """Drop the message, resynchronise, raise ``error`` (``literal``: its line's marker)."""
        tag = self._tag if error.tag is None else error.tag
        self.rejected_at = self._buf.last_line_at if self._state is State.LINE else None
        self._reset_message()
        self._resync(literal, tag)
        raise error.with_context(tag=tag, fatal=False)

    def _resync(self, literal: LiteralMarker | None, tag: bytes | None = None) -> None:
        """Set the state after a dropped line part that ended with ``literal``."""
        if literal is None or (self._peer_waits_for_sync and literal.synchronizing):
            self._state = State.LINE
            self.resumed_at = self._buf.consumed
            return
        if literal.size > self._limits.max_literal:
            self._fatal(ProtocolError("literal_too_big", "Literal too big", tag=tag))
        self._remaining = literal.size
        self._state = State.SKIP_LITERAL

    def _fatal(self, error: ProtocolError) -> None:
        self._fatal_error = error.with_context(tag=error.tag, fatal=True)
        self._state = State.FAILED
        raise self._fatal_error
