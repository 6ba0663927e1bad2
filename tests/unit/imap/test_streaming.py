"""Big literals stream through in bounded memory."""

from __future__ import annotations

import tracemalloc

from proxy.imap import NEED_DATA, CommandParser, Limits, LiteralRef, ProtocolError, ResponseParser
from proxy.imap._tokens import Literal
from proxy.imap.events import Command, CommandStart, LiteralData, LiteralStart, UntaggedResponse

CHUNK = 64 * 1024
SIZE = 50 * 1024 * 1024


def test_50mb_append_streams_in_64k_chunks() -> None:
    parser = CommandParser(parse_args=True, collect_literals=False)
    header = b"A1 APPEND INBOX (\\Seen) {%d}\r\n" % SIZE
    payload_chunk = b"x" * CHUNK
    stream = [header + payload_chunk[: CHUNK - len(header)]]
    stream += [payload_chunk] * (SIZE // CHUNK - 1)
    stream += [b"x" * len(header) + b"\r\nA2 NOOP\r\n"]
    total = 0
    max_buffered = 0
    others = []
    for chunk in stream:
        parser.receive_data(chunk)
        max_buffered = max(max_buffered, parser.buffered)
        while (event := parser.next_event()) is not NEED_DATA:
            if isinstance(event, LiteralData):
                total += len(event.data)
            else:
                others.append(event)
    assert total == SIZE
    assert max_buffered <= 128 * 1024
    assert others == [
        CommandStart(b"A1", b"APPEND"),
        LiteralStart(SIZE, True, False),
        Command(b"A1", b"APPEND", (b"INBOX", (b"\\Seen",), LiteralRef(SIZE))),
        CommandStart(b"A2", b"NOOP"),
        Command(b"A2", b"NOOP", ()),
    ]


def test_literal_chunks_are_zero_copy_views_of_input() -> None:
    parser = ResponseParser()
    parser.receive_data(b"* 1 FETCH (BODY[] {%d}\r\n" % (2 * CHUNK))
    assert isinstance(parser.next_event(), LiteralStart)
    chunk = bytes(CHUNK)
    parser.receive_data(chunk)
    event = parser.next_event()
    assert isinstance(event, LiteralData) and event.data is chunk  # whole chunk, no slice
    assert parser.in_literal
    parser.receive_data(chunk + b")\r\n")
    event = parser.next_event()
    assert isinstance(event, LiteralData) and isinstance(event.data, memoryview)
    assert event.data.obj is not None and len(event.data) == CHUNK
    assert isinstance(parser.next_event(), UntaggedResponse)
    assert not parser.in_literal and parser.buffered == 0


def test_partial_line_trickle_is_not_rescanned() -> None:
    # One byte at a time up to max_line must stay linear: every byte is searched for a line end
    # exactly once (the scan offset is kept between calls), so the work is the input's length.
    parser = CommandParser()
    wire = b"A1 NOOP " + b"a" * 60000 + b"\r\n"
    for byte in wire[:-2]:
        parser.receive_data(bytes((byte,)))
        assert parser.next_event() is NEED_DATA
    assert parser._buf.scanned == len(wire) - 2
    parser.receive_data(b"\r\n")
    assert parser.next_event() == CommandStart(b"A1", b"NOOP")
    assert parser._buf.scanned == len(wire)


def test_overlong_line_trickle_is_not_rescanned() -> None:
    # Past max_line the rest of the line is skipped as it arrives, still each byte searched once.
    parser = CommandParser(Limits(max_line=1000))
    overlong = b"A1 NOOP " + b"a" * 5000
    errors = []
    for byte in overlong:
        parser.receive_data(bytes((byte,)))
        try:
            assert parser.next_event() is NEED_DATA
        except ProtocolError as error:
            errors.append((error.kind, error.tag))
    assert errors == [("line_too_long", b"A1")]
    assert parser._buf.scanned == len(overlong)
    parser.receive_data(b"\r\nA2 NOOP\r\n")
    assert parser.next_event() == CommandStart(b"A2", b"NOOP")
    assert parser._buf.scanned == len(overlong) + len(b"\r\nA2 NOOP\r\n")


def test_a_collected_50mb_literal_keeps_no_received_chunk_and_is_copied_into_one_buffer() -> None:
    """The gateway collects an APPEND's literal: each received chunk is written into one buffer
    as it arrives and let go, so the peak is the buffer plus the Literal built from it (two
    literals' worth; keeping the chunks, then joining them, then building the Literal was three)."""
    parser = CommandParser(Limits(max_literal=SIZE), parse_args=True, collect_literals=True)
    parser.receive_data(b"A1 APPEND INBOX {%d}\r\n" % SIZE)
    events = []
    tracemalloc.start()
    try:
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
        for n in range(SIZE // CHUNK):
            parser.receive_data(bytes([n % 256]) * CHUNK)   # a new object per chunk, as recv gives
            while (event := parser.next_event()) is not NEED_DATA:
                events.append(event)
        parser.receive_data(b"\r\n")
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    literal = events[-1].args[1]
    assert isinstance(literal, Literal) and len(literal) == SIZE
    assert literal[CHUNK - 1:CHUNK + 1] == b"\x00\x01" and literal[-1] == (SIZE // CHUNK - 1) % 256
    assert peak < 2 * SIZE + 4 * CHUNK
