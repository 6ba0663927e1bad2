"""A relay moves a response literal's payload past the parser (the engine's splice,
proxy/relay/engine_splice.py): `literal_left` says how much it may move, `pass_literal` counts
it, and the parser reads on from the line after the payload as if it had read the payload."""

from __future__ import annotations

import pytest

from proxy.imap import NEED_DATA, ResponseParser
from proxy.imap.events import LiteralData, LiteralStart, TaggedResponse, UntaggedResponse


def events_of(parser: ResponseParser) -> list:
    out = []
    while (event := parser.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def test_payload_passed_in_parts_then_the_rest_parsed() -> None:
    parser = ResponseParser()
    parser.receive_data(b"* 1 FETCH (BODY[] {100}\r\n" + b"x" * 30)
    first = events_of(parser)
    assert [type(e) for e in first] == [LiteralStart, LiteralData]
    assert parser.literal_left == 70 and not parser.at_boundary
    before = parser._buf.consumed
    parser.pass_literal(50)
    assert parser.literal_left == 20
    parser.pass_literal(20)
    assert parser.literal_left == 0
    assert parser._buf.consumed == before + 70
    parser.receive_data(b")\r\na OK done\r\n")
    rest = events_of(parser)
    assert [type(e) for e in rest] == [UntaggedResponse, TaggedResponse]
    assert rest[0].raw == b"* 1 FETCH (BODY[] {100}" and rest[1].tag == b"a"
    assert parser.at_boundary


def test_nothing_to_pass_while_input_is_buffered_or_outside_a_literal() -> None:
    parser = ResponseParser()
    assert parser.literal_left == 0
    parser.receive_data(b"* 1 FETCH (BODY[] {100}\r\n")
    assert parser.literal_left == 0   # (its events are not read yet)
    events_of(parser)
    assert parser.literal_left == 100
    parser.receive_data(b"x")
    assert parser.literal_left == 0   # a buffered byte comes first
    with pytest.raises(RuntimeError):
        parser.pass_literal(1)
    events_of(parser)
    with pytest.raises(RuntimeError):
        parser.pass_literal(100)   # past the payload
    parser.pass_literal(99)
    parser.receive_data(b")\r\n")
    assert [type(e) for e in events_of(parser)] == [UntaggedResponse]
    assert parser.literal_left == 0
