"""Events produced by :class:`CommandParser` and :class:`ResponseParser`.

All events are frozen, slotted dataclasses.  Wire values stay ``bytes``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ._tokens import Token

__all__ = [
    "Event",
    "CommandStart",
    "Command",
    "LiteralStart",
    "LiteralData",
    "RawLine",
    "TaggedResponse",
    "UntaggedResponse",
    "ContinuationRequest",
    "ConnectionClosed",
]


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: Returned by ``next_event()`` when more input is needed (an enum: ``is`` narrows types).
NEED_DATA: Final = NeedData.NEED_DATA


class Event:
    """Base class of all parser events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CommandStart(Event):
    """A command's tag and name are known (emitted before any literal).

    ``name`` is upper-cased; ``UID <cmd>`` is joined, e.g. ``b"UID FETCH"``.
    It may be followed by a ``ProtocolError`` instead of a ``Command``.
    """

    tag: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class Command(Event):
    """A whole command (all line parts and literals) has been received.

    ``args`` holds the tokens after the name (after the subcommand for UID
    commands) when the parser has ``parse_args=True``, else ``()``.
    """

    tag: bytes
    name: bytes
    args: tuple[Token, ...]


@dataclass(frozen=True, slots=True)
class LiteralStart(Event):
    """A ``{n}``, ``{n+}`` or ``~{n}`` ended a line part.

    For a synchronizing literal from a client the caller must answer with a
    continuation request (``+ ...``) or refuse with a tagged reply and call
    ``reject_literal()``; the parser never writes.
    """

    size: int
    synchronizing: bool
    binary: bool


@dataclass(frozen=True, slots=True)
class LiteralData(Event):
    """A chunk of literal payload (only when ``collect_literals=False``)."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RawLine(Event):
    """One line, without its line end, returned because of ``expect_line()``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TaggedResponse(Event):
    """``tag OK|NO|BAD [CODE args] text`` (status upper-cased)."""

    tag: bytes
    status: bytes
    code: bytes | None
    code_args: bytes | None
    text: bytes


@dataclass(frozen=True, slots=True)
class UntaggedResponse(Event):
    """``* [number] NAME ...``, emitted once the whole response is received.

    Status responses (OK NO BAD PREAUTH BYE) fill ``code``/``code_args``/
    ``text`` and have ``args == ()``; data responses have ``code``, ``code_args``
    and ``text`` None and ``args`` tokenised when ``parse_args=True``.
    ``raw`` is the first line part as received, without its line end.
    """

    name: bytes
    number: int | None
    args: tuple[Token, ...]
    code: bytes | None
    code_args: bytes | None
    text: bytes | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class ContinuationRequest(Event):
    """A server's ``+ text`` line."""

    text: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the stream and all complete input has been consumed."""
