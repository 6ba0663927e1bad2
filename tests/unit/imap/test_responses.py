"""ResponseParser: wire bytes in, exact events out, under every chunking."""

from __future__ import annotations

import functools

import pytest

from proxy.imap import Atom, LiteralRef, ResponseParser
from proxy.imap.events import (
    ConnectionClosed,
    ContinuationRequest,
    LiteralData,
    LiteralStart,
    RawLine,
    TaggedResponse,
    UntaggedResponse,
)

from .helpers import check_all_chunkings, feed

A = Atom
PARSE = dict(parse_args=True)
COLLECT = dict(parse_args=True, collect_literals=True)
FETCH_RAW = b"* 1 FETCH (UID 7 BODY[] {11}"


def status(name: bytes, code, code_args, text: bytes, raw: bytes) -> UntaggedResponse:
    return UntaggedResponse(name, None, (), code, code_args, text, raw)


def data(name: bytes, number, args: tuple, raw: bytes) -> UntaggedResponse:
    return UntaggedResponse(name, number, args, None, None, None, raw)


CASES = [
    (
        "greeting-capability",
        {},
        b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] Dovecot ready.\r\n",
        [
            status(
                b"OK",
                b"CAPABILITY",
                b"IMAP4rev1 IDLE LITERAL+",
                b"Dovecot ready.",
                b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] Dovecot ready.",
            )
        ],
    ),
    (
        "preauth-no-code",
        {},
        b"* PREAUTH logged in\r\n",
        [status(b"PREAUTH", None, None, b"logged in", b"* PREAUTH logged in")],
    ),
    (
        "fetch-literal-streamed",
        PARSE,
        FETCH_RAW + b"\r\nhello world)\r\n",
        [
            LiteralStart(11, True, False),
            LiteralData(b"hello world"),
            data(b"FETCH", 1, ((A(b"UID"), A(b"7"), A(b"BODY[]"), LiteralRef(11)),), FETCH_RAW),
        ],
    ),
    (
        "fetch-literal-collected",
        COLLECT,
        FETCH_RAW + b"\r\nhello world)\r\n",
        [
            LiteralStart(11, True, False),
            data(b"FETCH", 1, ((A(b"UID"), A(b"7"), A(b"BODY[]"), b"hello world"),), FETCH_RAW),
        ],
    ),
    (
        "fetch-two-literals-framing-only",
        {},
        b"* 2 FETCH (BODY[HEADER] {3}\r\nabc BINARY[1] ~{2}\r\n\x00\xff)\r\n",
        [
            LiteralStart(3, True, False),
            LiteralData(b"abc"),
            LiteralStart(2, True, True),
            LiteralData(b"\x00\xff"),
            data(b"FETCH", 2, (), b"* 2 FETCH (BODY[HEADER] {3}"),
        ],
    ),
    (
        "envelope",
        PARSE,
        b'* 3 FETCH (ENVELOPE ("d" "s" (("A" NIL "a" "x.org")) NIL NIL NIL NIL NIL NIL "<i>"))\r\n',
        [
            data(
                b"FETCH",
                3,
                (
                    (
                        A(b"ENVELOPE"),
                        (b"d", b"s", ((b"A", A(b"NIL"), b"a", b"x.org"),))
                        + (A(b"NIL"),) * 6
                        + (b"<i>",),
                    ),
                ),
                b'* 3 FETCH (ENVELOPE ("d" "s" (("A" NIL "a" "x.org")) NIL NIL NIL NIL NIL NIL "<i>"))',
            )
        ],
    ),
    (
        "tagged-no-with-code",
        {},
        b"A1 NO [TRYCREATE] No such mailbox\r\n",
        [TaggedResponse(b"A1", b"NO", b"TRYCREATE", None, b"No such mailbox")],
    ),
    (
        "tagged-ok-lowercase-no-text",
        {},
        b"a2 ok\r\n",
        [TaggedResponse(b"a2", b"OK", None, None, b"")],
    ),
    (
        "continuations",
        {},
        b"+ \r\n+ Ready for literal\r\n+\r\n+ dGVzdA==\r\n",
        [
            ContinuationRequest(b""),
            ContinuationRequest(b"Ready for literal"),
            ContinuationRequest(b""),
            ContinuationRequest(b"dGVzdA=="),
        ],
    ),
    (
        "bye",
        {},
        b"* BYE [UNAVAILABLE] Shutting down\r\n",
        [
            status(
                b"BYE", b"UNAVAILABLE", None, b"Shutting down", b"* BYE [UNAVAILABLE] Shutting down"
            )
        ],
    ),
    (
        "exists-capability-permanentflags",
        PARSE,
        b"* 12 EXISTS\r\n* CAPABILITY IMAP4rev1 IDLE\r\n* OK [PERMANENTFLAGS (\\Seen \\*)] L\r\n",
        [
            data(b"EXISTS", 12, (), b"* 12 EXISTS"),
            data(b"CAPABILITY", None, (A(b"IMAP4rev1"), A(b"IDLE")), b"* CAPABILITY IMAP4rev1 IDLE"),
            status(
                b"OK",
                b"PERMANENTFLAGS",
                b"(\\Seen \\*)",
                b"L",
                b"* OK [PERMANENTFLAGS (\\Seen \\*)] L",
            ),
        ],
    ),
    (
        "list-literal-mailbox",
        COLLECT,
        b'* LIST (\\HasNoChildren) "/" {5}\r\nINBOX\r\nA1 OK done\r\n',
        [
            LiteralStart(5, True, False),
            data(b"LIST", None, ((A(b"\\HasNoChildren"),), b"/", b"INBOX"),
                 b'* LIST (\\HasNoChildren) "/" {5}'),
            TaggedResponse(b"A1", b"OK", None, None, b"done"),
        ],
    ),
    (
        "status-text-braces-are-not-literals",  # RFC 9051 §9 resp-text
        {},
        b"* OK weird {5}\r\nA1 OK {3}\r\n",
        [
            status(b"OK", None, None, b"weird {5}", b"* OK weird {5}"),
            TaggedResponse(b"A1", b"OK", None, None, b"{3}"),
        ],
    ),
    (
        "eof-mid-literal",
        {},
        b"* 1 FETCH (BODY[] {10}\r\nabc",
        [LiteralStart(10, True, False), LiteralData(b"abc"), ConnectionClosed()],
    ),
]


@pytest.mark.parametrize("kwargs, wire, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_responses(kwargs: dict, wire: bytes, expected: list) -> None:
    eof = isinstance(expected[-1], ConnectionClosed)
    check_all_chunkings(functools.partial(ResponseParser, **kwargs), wire, expected, eof=eof)


def test_expect_line_on_response_parser() -> None:
    parser = ResponseParser()
    parser.expect_line()
    assert feed(parser, [b"anything at all\r\n* 1 EXISTS\r\n"]) == [
        RawLine(b"anything at all"),
        data(b"EXISTS", 1, (), b"* 1 EXISTS"),
    ]
