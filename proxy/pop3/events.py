"""Events produced by :class:`CommandParser` and :class:`ResponseParser`.

Wire values stay ``bytes``.  Events are frozen, slotted dataclasses and
compare by value, so tests can write expected event lists literally.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Event",
    "Command",
    "RawLine",
    "StatusLine",
    "Continuation",
    "MultilineData",
    "MultilineEnd",
    "ConnectionClosed",
]


class Event:
    """Base class of every POP3 event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Command(Event):
    """A client command line.

    Attributes:
        name: keyword, upper-cased (keywords are case-insensitive, RFC 1939 §3).
        args: arguments split on single spaces; for PASS the whole rest of
            the line is one argument (RFC 1939 §7: the password may contain
            spaces).
        raw: the line as received, without its line terminator.
    """

    name: bytes
    args: tuple[bytes, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class RawLine(Event):
    """A client line read after ``CommandParser.expect_line()``.

    Used for RFC 5034 §4 SASL responses; ``data == b"*"`` cancels the
    exchange.  ``data`` excludes the line terminator.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class StatusLine(Event):
    """A ``+OK`` or ``-ERR`` server line (RFC 1939 §3).

    Attributes:
        ok: True for ``+OK``.
        code: the RFC 2449 §8 response code without brackets
            (``b"SYS/TEMP"``, ``b"AUTH"``, ``b"IN-USE"``), or None.
        text: the rest of the line after the indicator and code.
    """

    ok: bool
    code: bytes | None
    text: bytes


@dataclass(frozen=True, slots=True)
class Continuation(Event):
    """A ``+ `` server line: an RFC 5034 §4 SASL challenge (``data`` may be empty)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MultilineData(Event):
    """A chunk of a multi-line response body (RFC 1939 §3).

    In relay mode ``data`` is wire form: still dot-stuffed.  With
    ``ResponseParser(unstuff=True)`` it is the decoded content.  Every body
    line keeps its CRLF, including the last one; only the terminating
    ``.CRLF`` line is excluded, so a relay writes the chunks and then
    ``b".\\r\\n"`` at :class:`MultilineEnd`.
    """

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class MultilineEnd(Event):
    """The terminating ``.CRLF`` line of a multi-line body was read."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed and all complete input was consumed.

    Within a multi-line body this arrives without a :class:`MultilineEnd`:
    the body was cut short.
    """
