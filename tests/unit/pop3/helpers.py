"""Test helpers: drive a parser over chunked input and normalise its output."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from proxy.pop3 import NEED_DATA, ProtocolError
from proxy.pop3.events import Command, ConnectionClosed, MultilineData, RawLine

OnEvent = Callable[[object, object], None]


@dataclass(frozen=True)
class Error:
    """A ProtocolError in an expected-events list."""

    kind: str


def merge_data(events: Iterable[object]) -> list[object]:
    """Join adjacent MultilineData: chunking is not part of the contract."""
    out: list[object] = []
    for event in events:
        if isinstance(event, MultilineData) and out and isinstance(out[-1], MultilineData):
            out[-1] = MultilineData(bytes(out[-1].data) + bytes(event.data))
        elif isinstance(event, MultilineData):
            out.append(MultilineData(bytes(event.data)))
        else:
            out.append(event)
    return out


def drain(parser, out: list[object], on_event: OnEvent | None = None) -> bool:
    """Collect events and errors into `out` until NEED_DATA (False), or ConnectionClosed or a
    fatal error (True)."""
    while True:
        try:
            event = parser.next_event()
        except ProtocolError as exc:
            out.append(Error(exc.kind))
            if exc.fatal:
                return True
            continue
        if event is NEED_DATA:
            return False
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return True
        if on_event is not None:
            on_event(parser, event)


def drive(parser, chunks: Iterable[bytes], on_event: OnEvent | None = None) -> list[object]:
    """Feed chunks then EOF; collect events and errors until ConnectionClosed
    or a fatal error."""
    out: list[object] = []
    for chunk in [*[c for c in chunks if c], b""]:
        parser.receive_data(chunk)
        if drain(parser, out, on_event):
            return merge_data(out)
    raise AssertionError("no ConnectionClosed after EOF")


def splits(wire: bytes) -> Iterator[list[bytes]]:
    """Whole, one byte at a time, and cut in two at every point."""
    yield [wire]
    yield [wire[i : i + 1] for i in range(len(wire))]
    for i in range(len(wire) + 1):
        yield [wire[:i], wire[i:]]


def cut(wire: bytes, points: Iterable[int]) -> list[bytes]:
    """Cut wire at the given offsets."""
    bounds = [0, *sorted(set(points)), len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


def check_every_split(
    make_parser: Callable[[], object],
    wire: bytes,
    expected: list[object],
    make_on_event: Callable[[], OnEvent | None] = lambda: None,
) -> None:
    for chunks in splits(wire):
        got = drive(make_parser(), chunks, make_on_event())
        assert got == expected, f"chunks={chunks!r}"


def sasl_script(lines_per_auth: int) -> Callable[[], OnEvent]:
    """An on_event hook playing a server that wants N SASL lines after AUTH
    without an initial response; '*' cancels."""

    def make() -> OnEvent:
        remaining = 0

        def on_event(parser, event) -> None:
            nonlocal remaining
            if isinstance(event, Command) and event.name == b"AUTH" and len(event.args) == 1:
                remaining = lines_per_auth
            elif isinstance(event, RawLine):
                remaining = 0 if event.data == b"*" else remaining - 1
            else:
                remaining = 0
            if remaining:
                parser.expect_line()

        return on_event

    return make
