"""``CommandParser``: parses client commands (RFC 3501 §6 / RFC 9051 §6).

Framing, literals, limits and resynchronisation live in ``_parser``.

Fast path: most commands a relay sees are one line with no literal (``a1 NOOP``, ``a2 UID
FETCH 1:* (FLAGS)``). Without ``parse_args`` such a line needs nothing of the message machinery:
``_step_line`` splits its head and queues ``CommandStart`` and ``Command`` at once. A line
ending in ``}`` (maybe a literal) takes the general path; errors are raised as there. A relay
that has such a line as one chunk at rest can even skip the buffer and the events:
``plain_line()`` reads its head with one regex, and only where the parser would accept it.
"""

from __future__ import annotations

from . import events as ev
from ._errors import ProtocolError
from ._lines import PLAIN_COMMAND_RE, find_literal, parse_command_head
from ._parser import BaseParser
from ._resync import State as _State
from ._tokens import Token

__all__ = ["CommandParser"]


class CommandParser(BaseParser):
    """Parses client commands (the server side of a connection).

    Args:
        limits: size limits; see :class:`Limits` and ``PREAUTH_LIMITS``.
        collect_literals: gather literal payloads into ``Command.args``
            (bounded by ``max_literal``) instead of streaming ``LiteralData``.
            Without ``parse_args`` collected payloads are discarded.
        parse_args: tokenise arguments into ``Command.args``.
    """

    _peer_waits_for_sync = True

    def reject_literal(self) -> None:
        """The caller refused the synchronising literal just announced.

        Call right after ``LiteralStart``, having sent a tagged NO/BAD instead
        of ``+``.  The current command is dropped; the client will not send
        the payload (RFC 3501 §7.5), so parsing resumes at the next line.  For a
        non-synchronising literal the payload is skipped instead.
        """
        if self._state is not _State.LITERAL or self._literal is None:
            raise RuntimeError("reject_literal() called outside a literal")
        literal = self._literal
        self._reset_message()
        if literal.synchronizing:
            self._state = _State.LINE
        else:
            self._state = _State.SKIP_LITERAL  # _remaining still counts it

    def plain_line(self, data: bytes) -> tuple[bytes, bytes] | None:
        """``data`` is a whole chunk: when it is one command line with no literal that parsing
        would accept as it is (``CommandStart`` and ``Command`` with no args), return its
        ``(tag, name)`` and count it consumed, with no events; else None and nothing taken
        (``receive_data`` it then). Only outside ``parse_args``. One regex, no other Python
        call than the parser's rest check: the relay's hot path."""
        match = PLAIN_COMMAND_RE.fullmatch(data)
        if match is None or self._parse_args:
            return None
        tag, name, sub = match.groups()
        name = name.upper()
        if name == b"UID":   # (a UID without a subcommand is an error: the parser's to answer)
            if sub is None:
                return None
            name = b"UID " + sub.upper()
        return (tag, name) if self._pass(len(data)) else None

    def _step_line(self) -> bool:
        if self._raw_next or self._parse_args:
            return super()._step_line()
        line = self._take_line()
        if line is None:
            return False
        if line.endswith(b"}"):   # maybe a literal: the general way
            self._start_message(line)
            return True
        try:
            tag, name, _ = parse_command_head(line, len(line))
        except ProtocolError as error:
            self._fail(error, None)
        self._events += (ev.CommandStart(tag, name), ev.Command(tag, name, ()))
        return True

    def _start_message(self, line: bytes) -> None:
        literal = find_literal(line)
        end = literal.start if literal is not None else len(line)
        try:
            tag, name, pos = parse_command_head(line, end)
        except ProtocolError as error:
            self._fail(error, literal)
        self._begin_message(tag)
        self._name = name
        self._events.append(ev.CommandStart(tag, name))
        self._continue_message(line, pos, literal)

    def _message_event(self, args: tuple[Token, ...]) -> ev.Event:
        assert self._tag is not None  # a command line always starts with its tag
        return ev.Command(self._tag, self._name, args)
