"""Hypothesis: no input breaks the parsers; dot-stuffing round-trips."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.pop3 import NEED_DATA, CommandParser, Limits, ProtocolError, ResponseParser, writer
from proxy.pop3._body import TERMINATOR, find_terminator
from proxy.pop3.events import ConnectionClosed, Event, MultilineData, MultilineEnd

from .helpers import cut, drive

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes rich in the characters POP3 framing cares about.
_ALPHABET = st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"\r\n.\r\n", b" ", b"+OK",
                             b"-ERR", b"+ ", b"[", b"]", b"/", b"\x00", b"A", b"PASS", b"\xff"])
wire_bytes = st.one_of(st.binary(max_size=300), st.lists(_ALPHABET, max_size=60).map(b"".join))


def _chunks(data: st.DataObject, wire: bytes) -> list[bytes]:
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    return cut(wire, points)


def _pump(parser, chunks, on_event) -> None:
    """Like helpers.drive but asserts every outcome is an Event or ProtocolError."""
    for chunk in [*[c for c in chunks if c], b""]:
        parser.receive_data(chunk)
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                assert exc.kind and exc.reply().startswith(b"-ERR ")
                if exc.fatal:
                    return
                continue
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            if isinstance(event, ConnectionClosed):
                return
            on_event(parser)
    raise AssertionError("no ConnectionClosed after EOF")


@SETTINGS
@given(wire=wire_bytes, data=st.data(), raw_lines=st.booleans(), limit=st.sampled_from([8, 64, 8192]))
def test_command_parser_only_events_or_protocol_error(wire, data, raw_lines, limit) -> None:
    parser = CommandParser(Limits(max_command_line=limit))
    _pump(parser, _chunks(data, wire), lambda p: p.expect_line() if raw_lines else None)


@SETTINGS
@given(
    wire=wire_bytes,
    data=st.data(),
    expectations=st.lists(st.booleans(), max_size=10),
    unstuff=st.booleans(),
    limit=st.sampled_from([8, 64, 8192]),
)
def test_response_parser_only_events_or_protocol_error(wire, data, expectations, unstuff, limit):
    parser = ResponseParser(Limits(max_response_line=limit), unstuff=unstuff)
    for multiline in expectations:
        parser.expect(multiline)
    _pump(parser, _chunks(data, wire), lambda p: None)


# Message lines: arbitrary bytes without CR/LF, often starting with dots.
_line = st.one_of(
    st.binary(max_size=20),
    st.builds(lambda dots, rest: b"." * dots + rest, st.integers(1, 3), st.binary(max_size=10)),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
messages = st.lists(_line, max_size=15).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


def _body_of(events: list[object]) -> bytes:
    assert events[0].ok and events[-2:] == [MultilineEnd(), ConnectionClosed()]
    chunks = [e.data for e in events[1:-2]]
    assert all(isinstance(e, MultilineData) for e in events[1:-2])
    return b"".join(bytes(c) for c in chunks)


@SETTINGS
@given(msg=messages, data=st.data())
def test_unstuff_round_trip(msg: bytes, data) -> None:
    wire = b"+OK\r\n" + writer.multiline(msg)
    parser = ResponseParser(greeting=False, unstuff=True)
    parser.expect(True)
    assert _body_of(drive(parser, _chunks(data, wire))) == msg


@SETTINGS
@given(msg=messages, data=st.data())
def test_relay_is_transparent(msg: bytes, data) -> None:
    body = writer.multiline(msg)
    parser = ResponseParser(greeting=False)
    parser.expect(True)
    relayed = _body_of(drive(parser, _chunks(data, b"+OK\r\n" + body)))
    assert relayed + writer.TERMINATOR_LINE == body


@SETTINGS
@given(msg=messages)
def test_unstuff_round_trip_byte_at_a_time(msg: bytes) -> None:
    wire = b"+OK\r\n" + writer.multiline(msg)
    parser = ResponseParser(greeting=False, unstuff=True)
    parser.expect(True)
    assert _body_of(drive(parser, [wire[i : i + 1] for i in range(len(wire))])) == msg


@given(st.lists(st.sampled_from([b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"..", b"A", b"\r", b"\n"]),
                max_size=80).map(b"".join), st.integers(0, 40))
@SETTINGS
def test_find_terminator_is_find(data: bytes, pos: int) -> None:
    """The memchr-first search finds exactly what one bytes.find of CRLF.CRLF finds, dotty input
    (past its per-dot budget) included, on bytes and bytearray."""
    assert find_terminator(data, pos) == data.find(TERMINATOR, pos)
    assert find_terminator(bytearray(data), pos) == data.find(TERMINATOR, pos)


@pytest.mark.parametrize(("data", "pos", "expected"), [
    (b"\r\n.\r\n", 0, 0),          # at the very start
    (b"x\r\n.\r\n", 1, 1),
    (b"\r\n.\r\n", 1, -1),         # starts before pos
    (b"a.b.c.d.e.f.g.h.i.j\r\n.\r\n", 0, 19),   # past the per-dot budget
    (b"a.b.c.d.e.f.g.h.i.j\r\n..x\r\n", 0, -1),
    (b"\r\n..\r\n", 0, -1),        # a stuffed dot line is not the end
])
def test_find_terminator_cases(data: bytes, pos: int, expected: int) -> None:
    assert find_terminator(data, pos) == expected == data.find(TERMINATOR, pos)
