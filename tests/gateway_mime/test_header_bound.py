"""MimeLimits.max_header_bytes: a part's header is analysed up to the bound (Dovecot's
MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE semantics, checked against Dovecot itself in
tests/gateway_imapd/test_huge_header.py), so what is cached for a message whose header is
huge stays proportional to the bound, not to the message."""

from __future__ import annotations

import json

import pytest

from proxy.gateway import analysis, mime, sortkeys
from proxy.gateway._parts import MimeLimits, Part, fill_headers, parse
from proxy.gateway.pop3_listing import internaldate

BOUND = 64 * 1024
LIMITS = MimeLimits(max_header_bytes=BOUND)
TAIL = b"Subject: after\r\nFrom: a@example.org\r\nContent-Type: text/html\r\nX-Other: x\r\n\r\nbody\r\n"


def test_the_field_crossing_the_bound_is_cut_and_later_ones_keep_only_their_names():
    raw = b"Subject: before\r\nX-Big: " + b"a" * (5 * BOUND) + b"\r\n" + TAIL
    root = parse(raw, LIMITS)
    assert [(name, len(value)) for name, value in root.headers] == [
        (b"Subject", 6), (b"X-Big", BOUND - len(b"Subject: before\r\nX-Big: ")),
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
