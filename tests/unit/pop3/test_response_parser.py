"""ResponseParser: bytes in, events out, at every split."""

from __future__ import annotations

import itertools

import pytest

from proxy.pop3 import NEED_DATA, Limits, ProtocolError, ResponseParser, is_multiline
from proxy.pop3.events import (
    ConnectionClosed,
    Continuation,
    MultilineData,
    MultilineEnd,
    StatusLine,
)

from .helpers import Error, check_every_split, cut, drive

CLOSED = ConnectionClosed()
END = MultilineEnd()
GREETING = b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n"
GREETED = StatusLine(True, None, b"POP3 server ready <1896.697170952@dbc.mtview.ca.us>")


def ok(text: bytes = b"", code: bytes | None = None) -> StatusLine:
    return StatusLine(True, code, text)


def err(text: bytes = b"", code: bytes | None = None) -> StatusLine:
    return StatusLine(False, code, text)


def data(payload: bytes) -> MultilineData:
    return MultilineData(payload)


def parser_factory(expectations, **kwargs):
    def make() -> ResponseParser:
        parser = ResponseParser(**kwargs)
        for multiline in expectations:
            parser.expect(multiline)
        return parser

    return make


RETR_WIRE = b"+OK 52 octets\r\n..leading\r\nmid\r\n..dots..\r\n...\r\n.\r\n"
RETR_BODY = b".leading\r\nmid\r\n.dots..\r\n..\r\n"

# (wire after the greeting, expectations, events after the greeting, unstuffed events or None)
RESPONSE_TABLE = [
    pytest.param(b"", [], [CLOSED], None, id="greeting-only"),
    pytest.param(
        b"+OK\r\n+OK maildrop locked and ready\r\n-ERR [AUTH] Authentication failed\r\n",
        [False, False, False],
        [ok(), ok(b"maildrop locked and ready"), err(b"Authentication failed", b"AUTH"), CLOSED],
        None,
        id="user-pass",
    ),
    pytest.param(
        b"-ERR [SYS/TEMP] x\r\n-ERR [IN-USE]\r\n-err [bad code] y\r\n+ok [A/B/C] z\r\n",
        [False] * 4,
        [err(b"x", b"SYS/TEMP"), err(b"", b"IN-USE"), err(b"[bad code] y"), ok(b"z", b"A/B/C"),
         CLOSED],
        None,
        id="resp-codes",
    ),
    pytest.param(
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nSASL PLAIN LOGIN\r\n"
        b"RESP-CODES\r\nPIPELINING\r\n.\r\n",
        [True],
        [ok(b"Capability list follows"),
         data(b"TOP\r\nUIDL\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nPIPELINING\r\n"), END, CLOSED],
        None,
        id="capa",
    ),
    pytest.param(
        b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n+OK 2 200\r\n"
        b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n.\r\n+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n",
        [True, False, True, False],
        [ok(b"2 messages"), data(b"1 120\r\n2 200\r\n"), END, ok(b"2 200"),
         ok(), data(b"1 whqtswO00WBw418f9t5JxYwZ\r\n"), END, ok(b"1 whqtswO00WBw418f9t5JxYwZ"),
         CLOSED],
        None,
        id="list-uidl",
    ),
    pytest.param(
        RETR_WIRE,
        [True],
        [ok(b"52 octets"), data(RETR_WIRE[15:-3]), END, CLOSED],
        [ok(b"52 octets"), data(RETR_BODY), END, CLOSED],
        id="retr-dot-stuffed",
    ),
    pytest.param(b"+OK\r\n.\r\n", [True], [ok(), END, CLOSED], None, id="empty-body"),
    pytest.param(b"+OK\r\n\r\n.\r\n", [True], [ok(), data(b"\r\n"), END, CLOSED], None,
                 id="one-empty-line"),
    pytest.param(b"+OK\r\n..\r\n.\r\n", [True], [ok(), data(b"..\r\n"), END, CLOSED],
                 [ok(), data(b".\r\n"), END, CLOSED], id="body-is-one-dot"),
    pytest.param(b"+OK\r\n.\r\r\n.\r\n", [True], [ok(), data(b".\r\r\n"), END, CLOSED],
                 [ok(), data(b"\r\r\n"), END, CLOSED], id="dot-cr-is-not-terminator"),
    pytest.param(b"+OK\r\n.x\r\n\r\n.y\r\n.\r\n", [True],  # unstuffed lines: RFC 1939 §3 strips
                 [ok(), data(b".x\r\n\r\n.y\r\n"), END, CLOSED],
                 [ok(), data(b"x\r\n\r\ny\r\n"), END, CLOSED], id="unstuffed-dots-stripped"),
    pytest.param(b"-ERR no such message\r\n+OK\r\n", [True, False],
                 [err(b"no such message"), ok(), CLOSED], None, id="err-is-single-line"),
    pytest.param(
        b"+OK\r\n+OK\r\n+OK 2 320\r\n+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"
        b"+OK 120 octets\r\nSubject: hi\r\n\r\n..body\r\n.\r\n+OK deleted\r\n"
        b"+OK\r\n1 a\r\n2 b\r\n.\r\n-ERR [SYS/PERM] nope\r\n+OK bye\r\n",
        [False, False, False, True, True, False, True, True, False],
        [ok(), ok(), ok(b"2 320"), ok(b"2 messages"), data(b"1 120\r\n2 200\r\n"), END,
         ok(b"120 octets"), data(b"Subject: hi\r\n\r\n..body\r\n"), END, ok(b"deleted"),
         ok(), data(b"1 a\r\n2 b\r\n"), END, err(b"nope", b"SYS/PERM"), ok(b"bye"), CLOSED],
        [ok(), ok(), ok(b"2 320"), ok(b"2 messages"), data(b"1 120\r\n2 200\r\n"), END,
         ok(b"120 octets"), data(b"Subject: hi\r\n\r\n.body\r\n"), END, ok(b"deleted"),
         ok(), data(b"1 a\r\n2 b\r\n"), END, err(b"nope", b"SYS/PERM"), ok(b"bye"), CLOSED],
        id="pipelined-mixed",
    ),
    pytest.param(b"+ \r\n+OK Logged in\r\n", [False],
                 [Continuation(b""), ok(b"Logged in"), CLOSED], None, id="auth-plain-challenge"),
    pytest.param(
        b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n+OK\r\n+\r\n-ERR [AUTH] cancelled\r\n",
        [False, False],
        [Continuation(b"VXNlcm5hbWU6"), Continuation(b"UGFzc3dvcmQ6"), ok(), Continuation(b""),
         err(b"cancelled", b"AUTH"), CLOSED],
        None,
        id="auth-login-challenges",
    ),
    pytest.param(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n", [True],
                 [ok(), data(b"PLAIN\r\nLOGIN\r\n"), END, CLOSED], None, id="auth-mechanism-list"),
    pytest.param(b"+OK\nlf\r\n.\r\n", [True], [ok(), data(b"lf\r\n"), END, CLOSED], None,
                 id="bare-lf-status"),
    pytest.param(b"+OK\r\nhello\r\nwor", [True], [ok(), data(b"hello\r\nwor"), CLOSED], None,
                 id="eof-mid-body"),
    pytest.param(b"+OK\r\nhello\r\n", [True], [ok(), data(b"hello"), CLOSED], None,
                 id="eof-before-terminator-line"),
    pytest.param(b"+OK\r\nhello\r\n.\r", [True], [ok(), data(b"hello"), CLOSED], None,
                 id="eof-inside-terminator"),
    pytest.param(b"+OK\r\n.", [True], [ok(), CLOSED], None, id="eof-empty-body-partial"),
    pytest.param(b"+OK\r\n-ERR", [False, False], [ok(), CLOSED], None, id="eof-mid-status"),
]


@pytest.mark.parametrize(("wire", "expectations", "expected", "unstuffed"), RESPONSE_TABLE)
def test_responses(wire, expectations, expected, unstuffed) -> None:
    check_every_split(parser_factory(expectations), GREETING + wire, [GREETED, *expected])
    check_every_split(
        parser_factory(expectations, unstuff=True),
        GREETING + wire,
        [GREETED, *(expected if unstuffed is None else unstuffed)],
    )


@pytest.mark.parametrize(("wire", "expectations", "expected", "unstuffed"), RESPONSE_TABLE)
def test_relay_mode_reports_the_same_frames_without_body_data(wire, expectations, expected,
                                                                unstuffed) -> None:
    """keep_bodies=False: every event but MultilineData, at every split point."""
    frames = [e for e in expected if not isinstance(e, MultilineData)]
    check_every_split(parser_factory(expectations, keep_bodies=False), GREETING + wire,
                      [GREETED, *frames])


def test_greeting_option() -> None:
    assert ResponseParser().pending == 1
    assert ResponseParser(greeting=False).pending == 0


def test_terminator_cut_anywhere_into_three() -> None:
    wire = b"+OK\r\nab\r\n..c\r\n.\r\n+OK\r\n"
    expected = [ok(), data(b"ab\r\n..c\r\n"), END, ok(), CLOSED]
    for i, j in itertools.combinations(range(1, len(wire)), 2):
        got = drive(parser_factory([True, False], greeting=False)(), cut(wire, [i, j]))
        assert got == expected, (i, j)


def test_one_data_event_per_chunk() -> None:
    parser = parser_factory([True], greeting=False)()
    parser.receive_data(b"+OK\r\n")
    assert parser.next_event() == ok()
    events = []
    for chunk in (b"x" * 1000 + b"\r\n", b"y" * 1000 + b"\r\n", b".\r\n"):
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [data(b"x" * 1000), data(b"\r\n" + b"y" * 1000), data(b"\r\n"), END]


def test_pending_counts_expectations() -> None:
    parser = ResponseParser()
    parser.expect(True)
    parser.expect(False)
    assert parser.pending == 3
    parser.receive_data(GREETING + b"+OK\r\n.\r\n+ abc\r\n")
    parser.next_event()
    assert parser.pending == 2
    assert parser.next_event() == ok()
    assert parser.pending == 1
    assert parser.next_event() == END
    assert parser.next_event() == Continuation(b"abc")
    assert parser.pending == 1  # a continuation answers nothing
    assert parser.buffered == 0


SMALL = Limits(max_response_line=16)

MALFORMED_TABLE = [
    pytest.param(b"HELLO\r\n", [False], [Error("bad_response")], id="garbage-status"),
    pytest.param(b"+OKAY\r\n", [False], [Error("bad_response")], id="ok-glued-to-text"),
    pytest.param(b"-ERROR\r\n", [False], [Error("bad_response")], id="err-glued-to-text"),
    pytest.param(b"\r\n", [False], [Error("bad_response")], id="empty-line"),
    pytest.param(b"+OK\r\n", [], [Error("unexpected_response")], id="nothing-expected"),
    pytest.param(b"+ abc\r\n", [], [Error("unexpected_response")], id="continuation-unexpected"),
    pytest.param(b"+OK\r\n+OK\r\n", [False], [ok(), Error("unexpected_response")],
                 id="one-too-many"),
    pytest.param(b"+OK " + b"x" * 20 + b"\r\n", [False], [Error("line_too_long")],
                 id="overlong-status"),
    pytest.param(b"+OK 1234567890\r\n", [False], [ok(b"1234567890"), CLOSED], id="limit-boundary"),
    pytest.param(b"+OK\r\n" + b"x" * 100 + b"\r\n.\r\n", [True],
                 [ok(), data(b"x" * 100 + b"\r\n"), END, CLOSED], id="body-lines-not-limited"),
]


@pytest.mark.parametrize(("wire", "expectations", "expected"), MALFORMED_TABLE)
def test_malformed_responses(wire, expectations, expected) -> None:
    check_every_split(parser_factory(expectations, greeting=False, limits=SMALL), wire, expected)


@pytest.mark.parametrize(
    ("wire", "kind", "reply"),
    [
        (b"HELLO\r\n", "bad_response", b"-ERR [SYS/TEMP] Bad response from server\r\n"),
        (b"+OK " + b"x" * 20, "line_too_long", b"-ERR [SYS/TEMP] Line too long\r\n"),
    ],
)
def test_response_errors_are_fatal_and_sticky(wire, kind, reply) -> None:
    parser = ResponseParser(SMALL)
    parser.receive_data(wire)
    for _ in range(2):
        with pytest.raises(ProtocolError) as info:
            parser.next_event()
        assert (info.value.kind, info.value.fatal, info.value.reply()) == (kind, True, reply)


def test_unexpected_response_reply() -> None:
    parser = ResponseParser(greeting=False)
    parser.receive_data(b"+OK\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.kind == "unexpected_response"
    assert info.value.reply() == b"-ERR [SYS/TEMP] Unexpected response from server\r\n"


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        (b"RETR", (b"1",), True),
        (b"TOP", (b"1", b"0"), True),
        (b"CAPA", (), True),
        (b"capa", (), True),
        (b"LIST", (), True),
        (b"LIST", (b"1",), False),
        (b"UIDL", (), True),
        (b"UIDL", (b"1",), False),
        (b"AUTH", (), True),
        (b"AUTH", (b"PLAIN",), False),
        (b"STAT", (), False),
        (b"USER", (b"a",), False),
        (b"PASS", (b"a b",), False),
        (b"DELE", (b"1",), False),
        (b"QUIT", (), False),
        (b"STLS", (), False),
    ],
)
def test_is_multiline(name, args, expected) -> None:
    assert is_multiline(name, args) is expected


