"""Test helpers: feed wire bytes in many chunkings and compare exact events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from proxy.imap import NEED_DATA, Atom, ProtocolError
from proxy.imap import events as ev

Reactor = Callable[[Any, ev.Event], None]


@dataclasses.dataclass(frozen=True)
class Err:
    """A ProtocolError as it appears in an expected event list."""

    kind: str
    reply: bytes
    fatal: bool = False


def drain(parser: Any, react: Reactor | None = None) -> list:
    """Call ``next_event()`` until NEED_DATA, ConnectionClosed or a fatal error."""
    out: list = []
    while True:
        try:
            event = parser.next_event()
        except ProtocolError as error:
            out.append(Err(error.kind, error.reply(), error.fatal))
            if error.fatal:
                return out
            continue
        if event is NEED_DATA:
            return out
        out.append(event)
        if isinstance(event, ev.ConnectionClosed):
            return out
        if react is not None:
            react(parser, event)


def coalesce(events: list) -> list:
    """Merge adjacent LiteralData chunks (their boundaries depend on chunking)."""
    out: list = []
    for event in events:
        if isinstance(event, ev.LiteralData):
            data = bytes(event.data)
            if out and isinstance(out[-1], ev.LiteralData):
                data = out.pop().data + data
            event = ev.LiteralData(data)
        out.append(event)
    return out


def typed(value: Any) -> Any:
    """A comparable form that also distinguishes Atom from bytes."""
    if isinstance(value, Atom):
        return ("Atom", bytes(value))
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    if isinstance(value, (tuple, list)):
        return tuple(typed(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return (type(value).__name__,) + tuple(typed(getattr(value, f.name)) for f in fields)
    return value


def chunkings(wire: bytes, max_splits: int = 400) -> Iterator[list[bytes]]:
    """Whole, one byte at a time, and split in two at every (or many) points."""
    yield [wire]
    yield [wire[i : i + 1] for i in range(len(wire))]
    step = max(1, len(wire) // max_splits)
    for i in range(1, len(wire), step):
        yield [wire[:i], wire[i:]]


def feed(parser: Any, chunks: list[bytes], react: Reactor | None = None, eof: bool = False) -> list:
    events: list = []
    for chunk in chunks:
        parser.receive_data(chunk)
        events += drain(parser, react)
        if events and isinstance(events[-1], Err) and events[-1].fatal:
            return coalesce(events)
    if eof:
        parser.receive_data(b"")
        events += drain(parser, react)
    return coalesce(events)


def check_all_chunkings(
    factory: Callable[[], Any],
    wire: bytes,
    expected: list,
    react: Reactor | None = None,
    eof: bool = False,
) -> None:
    """Assert that every chunking of ``wire`` yields exactly ``expected``."""
    want = typed(expected)
    for chunks in chunkings(wire):
        got = typed(feed(factory(), chunks, react, eof))
        assert got == want, f"chunking {[len(c) for c in chunks][:8]}..."


def expect_line_after(*names: bytes) -> Reactor:
    """A reactor calling ``expect_line()`` after a Command with one of ``names``."""

    def react(parser: Any, event: ev.Event) -> None:
        if isinstance(event, ev.Command) and event.name in names:
            parser.expect_line()

    return react
