"""The POP3 relay's cheap path: `CommandParser.plain_line` reads a whole one-command chunk with
one regex, `ResponseParser.whole_answer` takes a chunk that is exactly one whole answer (status
line, and a multi-line body through its first terminator) without events. They may decline
anything, but what they take must be what parsing gives: the same command, the same status and
the expectation consumed, no error, nothing left over; what they decline is left untouched.
Hypothesis drives both against the full parse on steered random input."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.pop3 import CommandParser, Limits, ProtocolError, ResponseParser
from proxy.pop3.events import Command, MultilineEnd, StatusLine

from .helpers import drain

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_command_line=40, max_response_line=60)
COMMAND_PARTS = [b"RETR", b"retr", b"TOP", b"UIDL", b"LIST", b"QUIT", b"USER", b"1", b"12",
                 b"12345678901", b" ", b"  ", b"x", b"\x00", b"\r", b"\n", b"\t"]
ANSWER_PARTS = [b"+OK", b"+ok", b"-ERR", b"-err", b"+", b"+ ", b"OK", b" ", b"\r\n", b"\n",
                b"\r", b".", b"..", b"\r\n.\r\n", b".\r\n", b"text", b"[SYS/TEMP]", b"\x00"]
ENDING = st.sampled_from([b"\r\n", b"\n", b"", b"\r\n\r\n", b"\r\nNOOP\r\n"])


def fragments(parts: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(st.sampled_from(parts), st.binary(max_size=3)),
                    max_size=14).map(b"".join)


def parse(parser, data: bytes) -> list[object]:
    parser.receive_data(data)
    out: list[object] = []
    drain(parser, out)
    return out


@SETTINGS
@given(fragments(COMMAND_PARTS), ENDING)
@example(b"RETR 1", b"\r\n")
@example(b"top 1 10", b"\r\n")
@example(b"LIST 1 2 3", b"\r\n")
@example(b"RETR  1", b"\r\n")
@example(b"RETR 1 ", b"\r\n")
@example(b"UIDL", b"\r\n")
def test_plain_line_gives_what_parsing_gives(line, ending) -> None:
    data = line + ending
    cheap = CommandParser(LIMITS)
    head = cheap.plain_line(data)
    if head is None:
        assert cheap.at_rest
        return
    name, args = head
    assert parse(CommandParser(LIMITS), data) == [Command(name, args, data[:-2])]
    assert cheap.at_rest and parse(cheap, b"NOOP\r\n") == [Command(b"NOOP", (), b"NOOP")]


@SETTINGS
@given(st.booleans(), fragments(ANSWER_PARTS), fragments(ANSWER_PARTS))
@example(True, b"+OK 120 octets\r\nline\r\n", b".\r\n")
@example(True, b"+OK\r\n", b".\r\n")
@example(True, b"+OK\r\n.\r\n", b".\r\n")   # a second answer follows the first
@example(True, b"+OK\n", b".\r\n")
@example(False, b"+OK done", b"\r\n")
@example(False, b"-ERR", b"\r\n")
@example(False, b"-ERRx", b"\r\n")
@example(False, b"+OK\rx", b"\r\n")
@example(True, b"-ERR no such message", b"\r\n")
@example(True, b"+OK x\r\n..\r\n", b"\r\n.\r\n")
def test_whole_answer_takes_only_what_parsing_gives_the_same(multiline, head, tail) -> None:
    data = head + tail
    cheap, full = ResponseParser(LIMITS, greeting=False, keep_bodies=False), \
        ResponseParser(LIMITS, greeting=False, keep_bodies=False)
    for parser in (cheap, full):
        parser.expect(multiline)
        parser.expect(False)   # a later command's: must stay queued
    ok = cheap.whole_answer(data)
    if ok is None:
        assert cheap.pending == 2 and cheap.buffered == 0
        return
    events = parse(full, data)
    assert type(events[0]) is StatusLine and events[0].ok is ok
    assert events[1:] == ([MultilineEnd()] if ok and multiline else [])
    assert full.pending == cheap.pending == 1 and full.buffered == 0


BODY_PARTS = [b"line", b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b"\r\n.\r", b"\r\n.\r\n",
              b".\r\n", b"\r\n..\r\n", b"+OK 1 2\r\n", b"x"]


@SETTINGS
@given(fragments(BODY_PARTS), fragments(BODY_PARTS), fragments(BODY_PARTS))
@example(b"+OK\r\nab", b"c\r\n.\r\n", b"")              # the end exactly at the chunk's end
@example(b"+OK\r\nab", b"c\r\n", b".\r\n")              # a tail held back: declined
@example(b"+OK\r\nab", b"c\r\n.\r\n+OK 1 2\r\n", b"")   # another answer behind the end
@example(b"+OK\r\nab", b"c\r", b"\n.\r\n")              # the terminator split 1/4
@example(b"+OK\r\nab", b"c\r\n..x\r\n..", b"\r\n.\r\n")  # stuffed lines at the chunk's edge
@example(b"+OK\r\n", b".\r\n", b"")                     # at the first line: declined
@example(b"+OK\r\n", b".\r\n+OK 1 2", b"\r\n")          # an empty body, another answer behind
@example(b"+OK\r\nx", b"\r\n.\r\n", b"")                 # the terminator opens the chunk
def test_body_chunk_takes_only_what_parsing_gives_the_same(head, middle, tail) -> None:
    """A multi-line answer begun by `head` (parsed), then chunks: `body_chunk` takes a chunk
    only where the parse gives the same thing (the end exactly at the chunk's end, or no end
    and nothing to hold back); what it declines is left untouched."""
    cheap, full = ResponseParser(LIMITS, greeting=False, keep_bodies=False), \
        ResponseParser(LIMITS, greeting=False, keep_bodies=False)
    for parser in (cheap, full):
        parser.expect(True)
        parser.expect(False)   # a later command's
        try:
            parse(parser, head) if head else None
        except ProtocolError:
            return
    for chunk in (middle, tail):
        if not chunk:
            continue
        try:
            events = parse(full, chunk)
        except ProtocolError:
            return
        ended = cheap.body_chunk(chunk)
        if ended is None:
            parse(cheap, chunk)   # (declined: the parse takes it, as the relay does)
            continue
        assert events == ([MultilineEnd()] if ended else [])
        assert cheap.buffered == full.buffered == 0 and cheap.pending == full.pending
    assert outcome(cheap, b"+OK 1 2\r\n") == outcome(full, b"+OK 1 2\r\n")


def outcome(parser, data: bytes) -> object:
    try:
        return parse(parser, data)
    except ProtocolError as exc:
        return exc.kind


def test_body_chunk_takes_the_common_chunks() -> None:
    """(So that the comparison above compares something: it takes both kinds of chunk.)"""
    parser = ResponseParser(LIMITS, greeting=False, keep_bodies=False)
    parser.expect(True)
    assert parse(parser, b"+OK\r\nab") == [StatusLine(True, None, b"")]
    assert parser.body_chunk(b"cd\r\nef") is False
    assert parser.body_chunk(b"\r\n.\r\n") is True
    assert parser.body_chunk(b"x") is None and parser.buffered == 0
