"""Hypothesis: any input gives events or ProtocolError, never anything else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.imap import NEED_DATA, PREAUTH_LIMITS, CommandParser, Limits, ProtocolError, ResponseParser, writer
from proxy.imap.events import Command, ConnectionClosed, Event, LiteralStart

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that steer random input into the interesting parts of the grammar.
FRAGMENTS = [
    b"A1 ", b"* ", b"+ ", b"UID ", b"FETCH ", b"LOGIN ", b"OK ", b"1 ", b"NIL",
    b"{3}\r\n", b"{0}\r\n", b"{2+}\r\n", b"~{1}\r\n", b"{99999999999999999999999}\r\n",
    b"(", b")", b'"', b"\\", b"[", b"]", b"<0.1>", b" ", b"\r\n", b"\n", b"\r", b"\x00", b"\xff",
]
wire_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=5)), max_size=60).map(b"".join),
)
LIMITS = [Limits(), PREAUTH_LIMITS,
          Limits(max_line=16, max_literal=8, max_nonsync_literal=2, max_depth=1, max_args=4)]
configs = st.tuples(st.sampled_from([CommandParser, ResponseParser]), st.sampled_from(LIMITS),
                    st.booleans(), st.booleans())


def run_to_end(parser, chunks: list[bytes], react_expect_line: bool) -> None:
    """Feed chunks then EOF; only events and ProtocolError may come out."""
    for chunk in chunks + [b""]:
        parser.receive_data(chunk)
        for _ in range(10_000):  # bounded: every call consumes input or ends
            try:
                event = parser.next_event()
            except ProtocolError as error:
                assert error.reply().endswith(b"\r\n")
                if error.fatal:
                    return
                continue
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            if isinstance(event, ConnectionClosed):
                return
            if react_expect_line and isinstance(event, Command):
                parser.expect_line()
        else:
            raise AssertionError("parser did not make progress")
    raise AssertionError("no ConnectionClosed after EOF")


@SETTINGS
@given(configs, wire_bytes, st.data())
def test_any_input_whole_and_split(config, wire: bytes, data) -> None:
    cls, limits, collect, parse = config
    run_to_end(cls(limits, collect_literals=collect, parse_args=parse), [wire], False)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    chunks = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)], strict=True) if b > a]
    run_to_end(cls(limits, collect_literals=collect, parse_args=parse), chunks, data.draw(st.booleans()))


@SETTINGS
@given(st.binary(max_size=200))
def test_astring_round_trip(value: bytes) -> None:
    wire = b"A1 X " + writer.astring(value) + b" y\r\n"
    parser = CommandParser(parse_args=True, collect_literals=True)
    parser.receive_data(wire)
    events = []
    while (event := parser.next_event()) is not NEED_DATA:
        events.append(event)
    command = events[-1]
    assert isinstance(command, Command)
    assert command.args == (value, b"y")
    assert bytes(command.args[0]) == value
    if not value or any(b >= 0x80 or b in b"\r\n\x00" for b in value):
        assert any(isinstance(e, LiteralStart) for e in events) or value == b""


@SETTINGS
@given(st.binary(max_size=100).filter(lambda v: not any(b >= 0x80 or b in b"\r\n\x00" for b in v)))
def test_quoted_round_trip(value: bytes) -> None:
    parser = CommandParser(parse_args=True)
    parser.receive_data(b"A1 X " + writer.quoted(value) + b"\r\n")
    parser.next_event()
    assert parser.next_event() == Command(b"A1", b"X", (value,))
