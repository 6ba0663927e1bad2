"""The relay's fused step takes an upstream chunk that `PLAIN_ANSWER_RE` matches whole (complete
untagged lines, then at most one tagged status line) without parsing it (relay/imap_fused.py):
such a chunk, within `max_line`, must be exactly what parsing it gives: untagged responses only,
then the same tag and status, no literal, continuation or error, the parser back at a message
boundary with the whole chunk consumed and its last line where the step says it begins.
Hypothesis drives it against the full parse on steered random chunks of one to four lines."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.imap import Limits, ResponseParser
from proxy.imap._lines import PLAIN_ANSWER_RE, TAGGED_STATUSES
from proxy.imap.events import TaggedResponse, UntaggedResponse

from .helpers import drain

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADS = [b"* ", b"*", b"+ ", b"a1 ", b"", b"* 3 ", b"* 12345678901234567890 ",
         b"* 123456789012345678901 "]
FRAGMENTS = [b"EXISTS", b"exists", b"OK", b"ok", b"NO", b"BYE", b"FETCH", b"3", b"x-y", b" ",
             b"  ", b"(", b")", b"{", b"}", b"{3}", b"{2+}", b"~{1}", b"[ALERT]", b"\r", b"\n",
             b"\x00", b"\t", b"\xff", b"]"]
LINE = st.tuples(st.sampled_from(HEADS),
                 st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=2)),
                          max_size=5),
                 st.sampled_from([b"\r\n", b"\n", b""]))
LIMITS = Limits(max_line=60, max_literal=100)


@SETTINGS
@given(st.lists(LINE, min_size=1, max_size=4))
@example([(b"* ", [b"EXISTS"], b"\r\n")])
@example([(b"* 3 ", [b"EXISTS"], b"\r\n"), (b"a1 ", [b"OK", b" ", b"done"], b"\r\n")])
@example([(b"* ", [b"OK", b" ", b"[ALERT]", b" x"], b"\r\n"), (b"a1 ", [b"no"], b"\r\n")])
@example([(b"* 3 ", [b"FETCH", b" ", b"{3}"], b"\r\n")])
@example([(b"* ", [b"3"], b"\r\n")])
@example([(b"* 123456789012345678901 ", [b"EXISTS"], b"\r\n")])
def test_an_answer_the_fused_step_takes_is_what_parsing_gives(lines) -> None:
    data = b"".join(head + b"".join(parts) + end for head, parts, end in lines)
    match = PLAIN_ANSWER_RE.fullmatch(data) if len(data) <= LIMITS.max_line else None
    if match is None:
        return
    parser = ResponseParser(LIMITS)
    parser.receive_data(data)
    events = drain(parser)
    tag, status = match.groups()
    untagged = events[:-1] if tag is not None else events
    assert untagged and all(type(event) is UntaggedResponse for event in untagged), events
    if tag is not None:
        last = events[-1]
        assert type(last) is TaggedResponse, events
        assert (last.tag, last.status) == (tag, status if status in TAGGED_STATUSES
                                           else status.upper())
    assert parser.at_boundary and parser._buf.consumed == len(data)
    last_line = len(data) - data.rfind(b"\n", 0, len(data) - 1) - 1   # (as the step has it)
    assert parser._buf.last_line_at == len(data) - last_line
