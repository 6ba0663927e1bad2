"""CommandParser: wire bytes in, exact events out, under every chunking."""

from __future__ import annotations

import functools

import pytest

from proxy.imap import Atom, CommandParser, LiteralRef
from proxy.imap.events import (
    Command,
    CommandStart,
    ConnectionClosed,
    LiteralData,
    LiteralStart,
    RawLine,
)

from .helpers import check_all_chunkings, drain, expect_line_after, feed

A = Atom
PARSE = dict(parse_args=True)
COLLECT = dict(parse_args=True, collect_literals=True)
STREAM = dict(parse_args=True, collect_literals=False)
NOOP = [CommandStart(b"Z", b"NOOP"), Command(b"Z", b"NOOP", ())]

CASES = [
    (
        "login-quoted",
        PARSE,
        b'a1 login "user" "p\\"w\\\\"\r\n',
        [
            CommandStart(b"a1", b"LOGIN"),
            Command(b"a1", b"LOGIN", (b"user", b'p"w\\')),
        ],
    ),
    (
        "login-literals-collected",
        COLLECT,
        b"A1 LOGIN {4}\r\nuser {4+}\r\npass\r\n",
        [
            CommandStart(b"A1", b"LOGIN"),
            LiteralStart(4, True, False),
            LiteralStart(4, False, False),
            Command(b"A1", b"LOGIN", (b"user", b"pass")),
        ],
    ),
    (
        "login-literals-streamed",
        STREAM,
        b"A1 LOGIN {4}\r\nuser {4+}\r\npass\r\n",
        [
            CommandStart(b"A1", b"LOGIN"),
            LiteralStart(4, True, False),
            LiteralData(b"user"),
            LiteralStart(4, False, False),
            LiteralData(b"pass"),
            Command(b"A1", b"LOGIN", (LiteralRef(4), LiteralRef(4))),
        ],
    ),
    (
        "authenticate-sasl-ir",
        PARSE,
        b"A2 AUTHENTICATE PLAIN AGZvbwBiYXI=\r\n",
        [
            CommandStart(b"A2", b"AUTHENTICATE"),
            Command(b"A2", b"AUTHENTICATE", (A(b"PLAIN"), A(b"AGZvbwBiYXI="))),
        ],
    ),
    (
        "append-collected",
        COLLECT,
        b"A3 APPEND INBOX (\\Seen) {11}\r\nhello world\r\n",
        [
            CommandStart(b"A3", b"APPEND"),
            LiteralStart(11, True, False),
            Command(b"A3", b"APPEND", (A(b"INBOX"), (A(b"\\Seen"),), b"hello world")),
        ],
    ),
    (
        "append-streamed",
        STREAM,
        b"A3 APPEND INBOX (\\Seen) {11}\r\nhello world\r\n",
        [
            CommandStart(b"A3", b"APPEND"),
            LiteralStart(11, True, False),
            LiteralData(b"hello world"),
            Command(b"A3", b"APPEND", (A(b"INBOX"), (A(b"\\Seen"),), LiteralRef(11))),
        ],
    ),
    (
        "append-framing-only",
        {},
        b"A3 APPEND INBOX {5+}\r\nhello\r\n",
        [
            CommandStart(b"A3", b"APPEND"),
            LiteralStart(5, False, False),
            LiteralData(b"hello"),
            Command(b"A3", b"APPEND", ()),
        ],
    ),
    (
        "append-literal8",  # RFC 3516 §4.4
        COLLECT,
        b"A3 APPEND INBOX ~{3}\r\na\x00b\r\n",
        [
            CommandStart(b"A3", b"APPEND"),
            LiteralStart(3, True, True),
            Command(b"A3", b"APPEND", (A(b"INBOX"), b"a\x00b")),
        ],
    ),
    (
        "uid-fetch-header-fields",
        PARSE,
        b"A4 uid fetch 1:* (UID BODY.PEEK[HEADER.FIELDS (FROM)]<0.100>)\r\n",
        [
            CommandStart(b"A4", b"UID FETCH"),
            Command(
                b"A4",
                b"UID FETCH",
                (A(b"1:*"), (A(b"UID"), A(b"BODY.PEEK[HEADER.FIELDS (FROM)]<0.100>"))),
            ),
        ],
    ),
    (
        "pipelined",
        {},
        b"A1 NOOP\r\nA2 CAPABILITY\r\nA3 LOGOUT\r\n",
        [
            CommandStart(b"A1", b"NOOP"),
            Command(b"A1", b"NOOP", ()),
            CommandStart(b"A2", b"CAPABILITY"),
            Command(b"A2", b"CAPABILITY", ()),
            CommandStart(b"A3", b"LOGOUT"),
            Command(b"A3", b"LOGOUT", ()),
        ],
    ),
    (
        "bare-lf-accepted",
        PARSE,
        b"A1 SELECT INBOX\nZ NOOP\r\n",
        [CommandStart(b"A1", b"SELECT"), Command(b"A1", b"SELECT", (A(b"INBOX"),))] + NOOP,
    ),
    (
        "nested-lists-nil-empty-literal",
        COLLECT,
        b'A1 X (a (b "c" NIL) ()) "" {0}\r\n\r\n',
        [
            CommandStart(b"A1", b"X"),
            LiteralStart(0, True, False),
            Command(b"A1", b"X", ((A(b"a"), (A(b"b"), b"c", A(b"NIL")), ()), b"", b"")),
        ],
    ),
    (
        "store-flags",
        PARSE,
        b"t.1 UID STORE 1,3:5 +FLAGS.SILENT (\\Deleted $Junk)\r\n",
        [
            CommandStart(b"t.1", b"UID STORE"),
            Command(
                b"t.1",
                b"UID STORE",
                (A(b"1,3:5"), A(b"+FLAGS.SILENT"), (A(b"\\Deleted"), A(b"$Junk"))),
            ),
        ],
    ),
    (
        "eof-after-commands",
        {},
        b"A1 NOOP\r\nA2 LOGIN {5}\r\nab",
        [
            CommandStart(b"A1", b"NOOP"),
            Command(b"A1", b"NOOP", ()),
            CommandStart(b"A2", b"LOGIN"),
            LiteralStart(5, True, False),
            LiteralData(b"ab"),
            ConnectionClosed(),
        ],
    ),
]


@pytest.mark.parametrize("kwargs, wire, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_commands(kwargs: dict, wire: bytes, expected: list) -> None:
    eof = isinstance(expected[-1], ConnectionClosed)
    check_all_chunkings(functools.partial(CommandParser, **kwargs), wire, expected, eof=eof)


def test_idle_then_done_via_expect_line() -> None:
    wire = b"A5 IDLE\r\nDONE\r\nZ NOOP\r\n"
    expected = [CommandStart(b"A5", b"IDLE"), Command(b"A5", b"IDLE", ()), RawLine(b"DONE")] + NOOP
    check_all_chunkings(CommandParser, wire, expected, react=expect_line_after(b"IDLE"))


def test_idle_without_expect_line_parses_done_as_command() -> None:
    # The parser never changes mode by itself; DONE alone is a tag-only line.
    events = feed(CommandParser(), [b"A5 IDLE\r\nDONE\r\n"])
    assert events[:2] == [CommandStart(b"A5", b"IDLE"), Command(b"A5", b"IDLE", ())]
    assert events[2].kind == "bad_syntax"


def test_authenticate_continuation_lines() -> None:
    wire = b"A2 AUTHENTICATE PLAIN\r\nAGZvbwBiYXI=\r\nZ NOOP\r\n"
    expected = [
        CommandStart(b"A2", b"AUTHENTICATE"),
        Command(b"A2", b"AUTHENTICATE", (A(b"PLAIN"),)),
        RawLine(b"AGZvbwBiYXI="),
    ] + NOOP
    react = expect_line_after(b"AUTHENTICATE")
    check_all_chunkings(functools.partial(CommandParser, **PARSE), wire, expected, react=react)


def test_reject_synchronizing_literal_drops_command() -> None:
    parser = CommandParser(parse_args=True)
    parser.receive_data(b"A1 APPEND INBOX {100}\r\n")
    assert parser.next_event() == CommandStart(b"A1", b"APPEND")
    assert parser.next_event() == LiteralStart(100, True, False)
    assert parser.in_literal
    parser.reject_literal()  # caller answered "A1 NO [OVERQUOTA] ..." instead of "+"
    assert not parser.in_literal
    assert feed(parser, [b"Z NOOP\r\n"]) == NOOP


def test_reject_nonsync_literal_skips_payload() -> None:
    parser = CommandParser()
    parser.receive_data(b"A1 APPEND INBOX {5+}\r\nhel")
    assert parser.next_event() == CommandStart(b"A1", b"APPEND")
    assert parser.next_event() == LiteralStart(5, False, False)
    parser.reject_literal()
    assert feed(parser, [b"lo {2+}\r\nxy\r\nZ NOOP\r\n"]) == NOOP


def test_reject_literal_outside_literal_is_a_caller_bug() -> None:
    with pytest.raises(RuntimeError):
        CommandParser().reject_literal()


def test_data_after_eof_is_ignored() -> None:
    parser = CommandParser()
    parser.receive_data(b"A1 NOOP\r\n")
    parser.receive_data(b"")
    parser.receive_data(b"A2 NOOP\r\n")
    assert drain(parser) == [
        CommandStart(b"A1", b"NOOP"),
        Command(b"A1", b"NOOP", ()),
        ConnectionClosed(),
    ]
    assert isinstance(parser.next_event(), ConnectionClosed)


def test_collected_literals_of_one_command_are_bounded_together() -> None:
    """Collected literals are held until the command ends (MULTIAPPEND, RFC 3502): all of one
    command together stay within max_literal; the next command starts from zero. Streamed
    literals (the relay) are bounded one by one only."""
    from proxy.imap import Limits
    from proxy.imap._tokens import Literal

    from .helpers import Err

    wire = b"A1 APPEND X {6+}\r\nabcdef {5+}\r\nghijk\r\nA2 APPEND X {6+}\r\nabcdef\r\n"
    parser = CommandParser(Limits(max_literal=10), **COLLECT)
    events = feed(parser, [wire])
    assert Err("literal_too_big", b"A1 BAD [TOOBIG] Literal too big\r\n") in events
    assert events[-1] == Command(b"A2", b"APPEND", (A(b"X"), b"abcdef"))
    assert isinstance(events[-1].args[1], Literal)   # told from a quoted string
    streamed = feed(CommandParser(Limits(max_literal=10), **STREAM), [wire])
    assert not [e for e in streamed if isinstance(e, Err)]
