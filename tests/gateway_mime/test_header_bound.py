"""MimeLimits.max_header_bytes: a part's header is analysed up to the bound (Dovecot's
MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE semantics, checked against Dovecot itself in
tests/gateway_imapd/test_huge_header.py), so what is cached for a message whose header is
huge stays proportional to the bound, not to the message."""

from __future__ import annotations

import json

import pytest

from proxy.gateway import analysis, mime, sections, sortkeys
from proxy.gateway._parts import MimeLimits, Part, fill_headers, parse
from proxy.gateway.pop3_listing import internaldate

BOUND = 64 * 1024
LIMITS = MimeLimits(max_header_bytes=BOUND)
TAIL = b"Subject: after\r\nFrom: a@example.org\r\nContent-Type: text/html\r\nX-Other: x\r\n\r\nbody\r\n"


def test_the_field_crossing_the_bound_is_cut_and_later_ones_keep_only_their_names():
    raw = b"Subject: before\r\nX-Big: " + b"a" * (5 * BOUND) + b"\r\n" + TAIL
    root = parse(raw, LIMITS)
    assert [(name, len(value)) for name, value in root.headers] == [
        (b"Subject", 6), (b"X-Big", BOUND - 6),   # the bound counts values: "before" is 6
        (b"Subject", 0), (b"From", 0), (b"Content-Type", 0)]   # X-Other: not read by IMAP
    assert root.header_end == raw.index(b"body")   # the body still starts where it does
    assert mime.envelope(raw, LIMITS) == b'(NIL "" NIL NIL NIL NIL NIL NIL NIL NIL)'
    assert mime.bodystructure(raw, limits=LIMITS) == b'("" "" NIL NIL NIL "7bit" 6 NIL NIL NIL NIL)'


def test_names_past_the_bound_are_kept_once_however_often_they_repeat():
    raw = b"X-Big: " + b"a" * BOUND + b"\r\n" + b"Subject: s\r\nTo: t\r\n" * 100_000 + b"\r\nbody\r\n"
    assert parse(raw, LIMITS).headers[1:] == [(b"Subject", b""), (b"To", b"")]


def test_what_is_cached_for_a_huge_header_is_bounded_by_the_limit_not_the_message():
    raw = b"X-Big: " + b"a" * (80 * BOUND) + b"\r\n" + TAIL
    blob = analysis.analyze_for_store(raw, LIMITS)
    assert len(blob) < 3 * BOUND
    assert json.loads(blob)["size"] == len(raw)
    assert len(sortkeys.extract_record(raw, BOUND)) < 200
    assert internaldate(raw, BOUND) is not None


def test_a_header_under_the_bound_is_read_whole_and_folded_lines_are_joined_in_order():
    lines = [b" %d" % n for n in range(50_000)]
    raw = b"Subject: s\r\n" + b"\r\n".join(lines) + b"\r\nTo: t@example.org\r\n\r\nbody\r\n"
    root = parse(raw, MimeLimits(max_header_bytes=len(raw)))
    assert root.headers == [(b"Subject", b"s\r\n" + b"\r\n".join(lines)), (b"To", b"t@example.org")]
    again = fill_headers(raw, Part(start=0, header_end=root.header_end), False,
                         MimeLimits(max_header_bytes=len(raw)))
    assert again.headers == root.headers


def test_the_bound_must_be_positive():
    with pytest.raises(ValueError):
        MimeLimits(max_header_bytes=0)


# HEADER.FIELDS past the bound, as Dovecot 2.3.19 answers it (the same shapes at its 10 MiB bound
# are compared live in tests/gateway_imapd/test_huge_header.py): its header parser counts the
# values of the lines read so far and cuts each value to what is left of the bound.
FILL = b"Subject: lines\r\n" + b"".join(b"X-L%d: %s\r\n" % (n, b"c" * 100) for n in range(655))
LEFT = BOUND - 5 - 655 * 100   # 31 value bytes left after FILL


def fields(raw: bytes, section: str) -> bytes:
    return sections.fetch_section(raw, section, max_header_bytes=BOUND)


def test_header_fields_cut_the_value_crossing_the_bound_and_end_at_an_emptied_continuation():
    raw = FILL + b"X-K: v\r\n " + b"d" * 100 + b"\r\n more\r\nX-E: x\r\nX-A:  y\r\n\r\nbody\r\n"
    assert LEFT == 31
    # "v" takes 1 byte, the continuation the other 30 (its blank counts); " more" is emptied, and
    # an empty line ends the filtered header, so X-E and X-A are not reached
    assert fields(raw, "HEADER.FIELDS (X-K X-E X-A)") == b"X-K: v\r\n " + b"d" * 29 + b"\r\n\r\n"
    assert fields(raw, "HEADER.FIELDS (X-E X-A)") == b"X-E: \r\nX-A: \r\n\r\n"
    assert fields(raw, "HEADER.FIELDS (X-L654 X-L0)") == (
        b"X-L0: " + b"c" * 100 + b"\r\nX-L654: " + b"c" * 100 + b"\r\n\r\n")
    # .NOT is served whole, as Dovecot serves it
    assert fields(raw, "HEADER.FIELDS.NOT (X-K)") == (
        FILL + b"X-E: x\r\nX-A:  y\r\n\r\n")


def test_fields_past_the_bound_keep_their_name_and_colon_and_an_unmatched_continuation_goes_on():
    raw = (b"X-Big: " + b"a" * BOUND + b"\r\nsubject:x\r\nTo :  t\r\nCC:\r\nX-Z: 1\r\n z\r\n"
           b"NoColon\r\nX-E: x\r\n\r\nbody\r\n")
    assert fields(raw, "HEADER.FIELDS (Subject To Cc X-E NoColon)") == (
        b"subject:\r\nTo : \r\nCC:\r\nX-E: \r\n\r\n")
    assert fields(raw, "HEADER.FIELDS (X-Z X-E)") == b"X-Z: \r\n\r\n"
    assert fields(raw, "HEADER.FIELDS.NOT (X-Big)") == raw[raw.index(b"subject"):raw.index(b"body")]


def test_a_line_without_a_colon_counts_whole_as_a_value():
    raw = FILL + b"NoColon" + b"e" * 40 + b"\r\nX-E: x\r\n\r\n"
    assert fields(raw, "HEADER.FIELDS (X-E)") == b"X-E: \r\n\r\n"
    raw = FILL + b"X-K:" + b"e" * 40 + b"\r\nX-E: x\r\n\r\n"   # no blank after the colon: all value
    assert fields(raw, "HEADER.FIELDS (X-K X-E)") == b"X-K:" + b"e" * 31 + b"\r\nX-E: \r\n\r\n"


def test_under_the_bound_header_fields_are_whole():
    raw = FILL[:FILL.index(b"X-L10:")] + b"X-K: v\r\n\tw\r\n\r\nbody\r\n"
    assert sections.fetch_section(raw, "HEADER.FIELDS (X-K)") == b"X-K: v\r\n\tw\r\n\r\n"
