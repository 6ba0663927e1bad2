"""``ResponseParser``: parses server responses (RFC 3501 §7 / RFC 9051 §7).

Framing, literals, limits and resynchronisation live in ``_parser``.
"""

from __future__ import annotations

from . import events as ev
from ._errors import ProtocolError
from ._lines import (
    PLAIN_TAGGED_RE,
    STATUS_NAMES,
    TAGGED_STATUSES,
    find_literal,
    parse_resp_text,
    parse_response_head,
    parse_tagged_head,
)
from ._parser import BaseParser
from ._tokens import Token

__all__ = ["ResponseParser"]


class ResponseParser(BaseParser):
    """Parses server responses (the client side of a connection).

    Greeting, untagged and tagged responses, continuation requests, and
    literals inside data responses (FETCH bodies, LIST names...).  Status
    responses and continuations carry text, never literals (RFC 9051 §9
    resp-text).  Arguments as for :class:`CommandParser`.
    """

    def tagged_line(self, data: bytes) -> tuple[bytes, bytes] | None:
        """``data`` is a whole chunk: when it is one tagged status line (the common answer),
        return its ``(tag, status)`` as ``TaggedResponse`` has them and count it consumed,
        with no events; else None and nothing taken (``receive_data`` it then)."""
        match = PLAIN_TAGGED_RE.fullmatch(data)
        if match is None or not self._pass(len(data)):
            return None
        tag, status = match.groups()
        return tag, status if status in TAGGED_STATUSES else status.upper()

    def _start_message(self, line: bytes) -> None:
        if line.startswith(b"+"):
            text = line[2:] if line.startswith(b"+ ") else line[1:]
            self._events.append(ev.ContinuationRequest(text))
            return
        if line.startswith(b"* "):
            self._start_untagged(line)
            return
        try:
            tag, status, pos = parse_tagged_head(line)
        except ProtocolError as error:
            self._fail(error, None)
        code, code_args, text = parse_resp_text(line, pos)
        self._events.append(ev.TaggedResponse(tag, status, code, code_args, text))

    def _start_untagged(self, line: bytes) -> None:
        literal = find_literal(line)
        try:
            number, name, pos = parse_response_head(line)
        except ProtocolError as error:
            self._fail(error, literal)
        if number is None and name in STATUS_NAMES:
            code, code_args, text = parse_resp_text(line, pos)
            self._events.append(ev.UntaggedResponse(name, None, (), code, code_args, text, line))
            return
        self._begin_message(None)
        self._head = (name, number, line)
        self._continue_message(line, pos, literal)

    def _message_event(self, args: tuple[Token, ...]) -> ev.Event:
        name, number, raw = self._head
        return ev.UntaggedResponse(name, number, args, None, None, None, raw)
