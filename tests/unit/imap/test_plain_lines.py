"""The relay's cheap path: `CommandParser.plain_line` and `ResponseParser.tagged_line` read a
whole one-line chunk with one regex instead of the framing machinery. They may decline any
line, but a line they take must be exactly what parsing it gives (the same tag and name or
status, no other event, no error) and count as consumed the same; a declined line leaves the
parser untouched. Hypothesis drives both against the full parse on steered random lines."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.imap import CommandParser, Limits, ResponseParser
from proxy.imap.events import Command, CommandStart, TaggedResponse

from .helpers import drain

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAGMENTS = [b"a1", b"A.2", b"*", b"+", b"(", b"{", b"}", b"{3}", b"{2+}", b"~{1}", b" ", b"  ",
             b"UID", b"uid", b"FETCH", b"fetch1", b"NOOP", b"IDLE", b"ok", b"OK", b"NO", b"BAD",
             b"BYE", b"[ALERT]", b"1:*", b"\r", b"\n", b"\x00", b"\x01", b"\t", b"\xff", b"]", b"%"]
LINE = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=3)), max_size=12)
ENDING = st.sampled_from([b"\r\n", b"\n", b"", b"\r\n\r\n", b"\r\nx\r\n"])
LIMITS = Limits(max_line=40, max_literal=100)
AFTER = b"(bad line\r\n"   # a refused line: its `rejected_at` shows what was consumed before


def events_of(parser, data: bytes) -> list[object]:
    parser.receive_data(data)
    return drain(parser)


def rejected_at_after(parser) -> int | None:
    """Where a refused line fed next begins, as the parser counts: its consumed offset."""
    events_of(parser, AFTER)
    return parser.rejected_at


@SETTINGS
@given(LINE, ENDING)
@example([b"a1", b" ", b"NOOP"], b"\r\n")
@example([b"a1", b" ", b"uid", b" ", b"fetch", b" ", b"1:*"], b"\r\n")
@example([b"a1", b" ", b"UID"], b"\r\n")
@example([b"a1", b" ", b"UID", b" ", b"fetch1", b" ", b"1"], b"\r\n")
@example([b"a1", b" ", b"APPEND", b" ", b"{3}"], b"\r\n")
@example([b"a1", b" ", b"N", b"\x00", b"OOP"], b"\r\n")
@example([b"a1", b" ", b"NOOP", b"\t"], b"\r\n")
def test_plain_line_takes_only_what_parsing_gives_the_same(parts, ending) -> None:
    data = b"".join(parts) + ending
    cheap, full = CommandParser(LIMITS), CommandParser(LIMITS)
    head = cheap.plain_line(data)
    if head is None:   # declined: nothing taken
        assert cheap.at_boundary and rejected_at_after(cheap) == 0
        return
    tag, name = head
    assert events_of(full, data) == [CommandStart(tag, name), Command(tag, name, ())]
    assert full.at_boundary and rejected_at_after(cheap) == rejected_at_after(full) == len(data)


@SETTINGS
@given(LINE, ENDING)
@example([b"a1", b" ", b"OK", b" ", b"NOOP done"], b"\r\n")
@example([b"a1", b" ", b"ok"], b"\r\n")
@example([b"a1", b" ", b"NO", b" ", b"[ALERT]", b" ", b"x\r"], b"\r\n")
@example([b"a1", b" ", b"OKAY"], b"\r\n")
@example([b"a1", b" ", b"OK", b"\t", b"x"], b"\r\n")
@example([b"a1", b"  ", b"OK"], b"\r\n")
@example([b"*", b" ", b"OK", b" ", b"x"], b"\r\n")
def test_tagged_line_takes_only_what_parsing_gives_the_same(parts, ending) -> None:
    data = b"".join(parts) + ending
    cheap, full = ResponseParser(LIMITS), ResponseParser(LIMITS)
    head = cheap.tagged_line(data)
    if head is None:
        assert cheap.at_boundary and rejected_at_after(cheap) == 0
        return
    tag, status = head
    events = events_of(full, data)
    assert len(events) == 1 and type(events[0]) is TaggedResponse
    assert (events[0].tag, events[0].status) == (tag, status)
    assert full.at_boundary and rejected_at_after(cheap) == rejected_at_after(full) == len(data)


def test_plain_line_declines_where_the_parser_is_not_at_rest_or_the_line_is_long() -> None:
    parser = CommandParser(LIMITS)
    parser.receive_data(b"a1 NO")   # a line begun: the next chunk is its end, not a line
    assert parser.plain_line(b"a2 NOOP\r\n") is None
    assert events_of(parser, b"OP\r\n") == [CommandStart(b"a1", b"NOOP"), Command(b"a1", b"NOOP", ())]
    assert parser.plain_line(b"a2 SELECT " + b"x" * 40 + b"\r\n") is None   # over max_line
    parser.expect_line()   # (IDLE's DONE is read raw)
    assert parser.plain_line(b"a3 NOOP\r\n") is None
    assert CommandParser(LIMITS, parse_args=True).plain_line(b"a1 NOOP\r\n") is None
    assert ResponseParser(LIMITS).tagged_line(b"a1 OK " + b"x" * 40 + b"\r\n") is None
