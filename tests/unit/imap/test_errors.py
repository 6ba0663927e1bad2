"""Malformed input: the exact ProtocolError, then resynchronisation."""

from __future__ import annotations

import functools

import pytest

from proxy.imap import PREAUTH_LIMITS, CommandParser, Limits, ResponseParser
from proxy.imap.events import Command, CommandStart, LiteralData, LiteralStart, UntaggedResponse

from .helpers import Err, check_all_chunkings

NEXT = b"Z NOOP\r\n"
NOOP = [CommandStart(b"Z", b"NOOP"), Command(b"Z", b"NOOP", ())]
TOOBIG_LINE = b"A1 BAD [TOOBIG] Line too long\r\n"


def bad(tag: bytes, text: bytes) -> Err:
    return Err("bad_syntax", b"%s BAD [CLIENTBUG] %s\r\n" % (tag, text))


SHORT = Limits(max_line=20, max_literal=10, max_nonsync_literal=4, max_depth=2, max_args=3)

COMMAND_ERRORS = [
    # (id, limits, parse_args, wire, expected)
    ("empty-line", Limits(), False, b"\r\n", [bad(b"*", b"Empty command line")]),
    ("missing-tag", Limits(), False, b" NOOP\r\n", [bad(b"*", b"Invalid tag")]),
    ("plus-in-tag", Limits(), False, b"A+1 NOOP\r\n", [bad(b"*", b"Invalid tag")]),
    ("tag-only", Limits(), False, b"A1\r\n", [bad(b"A1", b"Missing command name")]),
    ("bad-name", Limits(), False, b"A1 NO\"OP\r\n", [bad(b"A1", b"Invalid command name")]),
    ("uid-alone", Limits(), False, b"A1 UID\r\n", [bad(b"A1", b"Missing UID subcommand")]),
    (
        "bare-close-paren",
        Limits(),
        True,
        b"A1 X a)\r\n",
        [CommandStart(b"A1", b"X"), bad(b"A1", b"Unexpected ')'")],
    ),
    (
        "unclosed-paren",
        Limits(),
        True,
        b"A1 X (a\r\n",
        [CommandStart(b"A1", b"X"), bad(b"A1", b"Missing ')'")],
    ),
    (
        "unterminated-quote",
        Limits(),
        True,
        b'A1 LOGIN "abc\r\n',
        [CommandStart(b"A1", b"LOGIN"), bad(b"A1", b"Invalid quoted string")],
    ),
    (
        "bad-escape",
        Limits(),
        True,
        b'A1 LOGIN "a\\nb" x\r\n',
        [CommandStart(b"A1", b"LOGIN"), bad(b"A1", b"Invalid quoted string")],
    ),
    (
        "missing-space",
        Limits(),
        True,
        b'A1 LOGIN "a""b"\r\n',
        [CommandStart(b"A1", b"LOGIN"), bad(b"A1", b"Missing space between arguments")],
    ),
    (
        "bad-literal-syntax",
        Limits(),
        True,
        b"A1 LOGIN {3x}\r\n",
        [CommandStart(b"A1", b"LOGIN"), bad(b"A1", b"Invalid literal")],
    ),
    (
        "literal-not-at-end",
        Limits(),
        True,
        b"A1 LOGIN {3} x\r\n",
        [CommandStart(b"A1", b"LOGIN"), bad(b"A1", b"Invalid literal")],
    ),
    (
        # Rejected before LiteralStart: the client gets BAD, never "+".
        "literal-glued-to-atom",
        Limits(),
        True,
        b"A1 LOGIN a{3}\r\n",
        [CommandStart(b"A1", b"LOGIN"), bad(b"A1", b"Missing space before literal")],
    ),
    (
        "overlong-line",
        SHORT,
        False,
        b"A1 LOGIN aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        [Err("line_too_long", TOOBIG_LINE)],
    ),
    (
        "overlong-line-no-tag",
        SHORT,
        False,
        b"*" * 30 + b"\r\n",
        [Err("line_too_long", b"* BAD [TOOBIG] Line too long\r\n")],
    ),
    (
        "overlong-continuation-with-nonsync-literal",
        SHORT,
        False,
        b"A1 X {2+}\r\nab " + b"c" * 30 + b" {3+}\r\nxyz\r\n",
        [
            CommandStart(b"A1", b"X"),
            LiteralStart(2, False, False),
            LiteralData(b"ab"),
            Err("line_too_long", TOOBIG_LINE),
        ],
    ),
    (
        "sync-literal-too-big",
        SHORT,
        False,
        b"A1 APPEND X {11}\r\n",
        [CommandStart(b"A1", b"APPEND"), Err("literal_too_big", b"A1 BAD [TOOBIG] Literal too big\r\n")],
    ),
    (
        "nonsync-literal-too-big-is-skipped",
        SHORT,
        True,
        b"A1 LOGIN {5+}\r\nhello {3+}\r\nabc\r\n",
        [
            CommandStart(b"A1", b"LOGIN"),
            Err(
                "nonsync_literal_too_big",
                b"A1 BAD [TOOBIG] Non-synchronizing literal too big\r\n",
            ),
        ],
    ),
    (
        "literal-minus-4096",  # RFC 7888 §4
        Limits(),
        False,
        b"A1 APPEND INBOX {4097+}\r\n" + b"x" * 4097 + b"\r\n",
        [
            CommandStart(b"A1", b"APPEND"),
            Err(
                "nonsync_literal_too_big",
                b"A1 BAD [TOOBIG] Non-synchronizing literal too big\r\n",
            ),
        ],
    ),
    (
        "bad-command-with-nonsync-literal-is-skipped",
        Limits(),
        False,
        b"A1 {3+}\r\nabc\r\n",
        [bad(b"A1", b"Invalid command name")],
    ),
    (
        "too-deep-preauth",
        PREAUTH_LIMITS,
        True,
        b"A1 ID (((a)))\r\n",
        [CommandStart(b"A1", b"ID"), Err("too_deep", b"A1 BAD [LIMIT] Too deeply nested\r\n")],
    ),
    (
        "too-many-args",
        SHORT,
        True,
        b"A1 X a b c d\r\n",
        [CommandStart(b"A1", b"X"), Err("too_many_args", b"A1 BAD [LIMIT] Too many arguments\r\n")],
    ),
    (
        "too-many-args-counting-literal",
        SHORT,
        True,
        b"A1 X a b c {1+}\r\nd\r\n",
        [CommandStart(b"A1", b"X"), Err("too_many_args", b"A1 BAD [LIMIT] Too many arguments\r\n")],
    ),
]


@pytest.mark.parametrize(
    "limits, parse_args, wire, expected",
    [c[1:] for c in COMMAND_ERRORS],
    ids=[c[0] for c in COMMAND_ERRORS],
)
def test_command_errors_then_resync(limits, parse_args, wire, expected) -> None:
    factory = functools.partial(CommandParser, limits, parse_args=parse_args)
    check_all_chunkings(factory, wire + NEXT, expected + NOOP)


FATAL = [
    (
        "nonsync-literal-over-max-literal",
        Limits(max_literal=10, max_nonsync_literal=10),
        b"A1 APPEND X {11+}\r\n",
        [CommandStart(b"A1", b"APPEND"), Err("literal_too_big", b"* BYE [TOOBIG] Literal too big\r\n", True)],
    ),
    (
        "absurd-nonsync-size",
        Limits(),
        b"A1 APPEND X {" + b"9" * 40 + b"+}\r\n",
        [CommandStart(b"A1", b"APPEND"), Err("literal_too_big", b"* BYE [TOOBIG] Literal too big\r\n", True)],
    ),
    (
        "overlong-line-beyond-resync-budget",  # max_line * RESYNC_FACTOR
        Limits(max_line=8),
        b"A1 " + b"x" * 200 + b"\r\n" + NEXT,
        [
            Err("line_too_long", TOOBIG_LINE),
            Err("line_too_long", b"* BYE [TOOBIG] Line too long\r\n", True),
        ],
    ),
]


@pytest.mark.parametrize("limits, wire, expected", [c[1:] for c in FATAL], ids=[c[0] for c in FATAL])
def test_fatal_command_errors(limits, wire, expected) -> None:
    check_all_chunkings(functools.partial(CommandParser, limits), wire, expected)


def test_fatal_error_repeats() -> None:
    parser = CommandParser(Limits(max_literal=10))
    parser.receive_data(b"A1 X {99+}\r\n" + NEXT)
    parser.next_event()
    for _ in range(2):
        with pytest.raises(Exception) as info:
            parser.next_event()
        assert info.value.fatal and info.value.kind == "literal_too_big"


def test_absurd_sync_literal_is_not_fatal() -> None:
    wire = b"A1 APPEND X {" + b"9" * 40 + b"}\r\n" + NEXT
    expected = [CommandStart(b"A1", b"APPEND"),
                Err("literal_too_big", b"A1 BAD [TOOBIG] Literal too big\r\n")]
    check_all_chunkings(CommandParser, wire, expected + NOOP)


EXISTS = b"* 2 EXISTS\r\n"
EXISTS_EVENT = UntaggedResponse(b"EXISTS", 2, (), None, None, None, b"* 2 EXISTS")

RESPONSE_ERRORS = [
    (
        "bad-status",
        Limits(),
        b"A1 MAYBE done\r\n",
        [Err("bad_syntax", b"A1 BAD [CLIENTBUG] Invalid response status\r\n")],
    ),
    ("star-no-space", Limits(), b"*OK\r\n", [Err("bad_syntax", b"* BAD [CLIENTBUG] Invalid tag\r\n")]),
    (
        "bad-args-literal-skipped",
        Limits(),
        b'* 1 FETCH (X "open {3}\r\nabc)\r\n',
        [Err("bad_syntax", b"* BAD [CLIENTBUG] Invalid quoted string\r\n")],
    ),
    (
        "bad-name-literal-skipped",
        Limits(),
        b"* {3}\r\nabc\r\n",
        [Err("bad_syntax", b"* BAD [CLIENTBUG] Invalid response name\r\n")],
    ),
]


@pytest.mark.parametrize("limits, wire, expected", [c[1:] for c in RESPONSE_ERRORS],
                         ids=[c[0] for c in RESPONSE_ERRORS])
def test_response_errors_then_resync(limits, wire, expected) -> None:
    factory = functools.partial(ResponseParser, limits, parse_args=True)
    check_all_chunkings(factory, wire + EXISTS, expected + [EXISTS_EVENT])


def test_response_literal_too_big_is_fatal() -> None:
    wire = b"* 1 FETCH (BODY[] {11}\r\n" + b"x" * 11 + b")\r\n"
    expected = [Err("literal_too_big", b"* BYE [TOOBIG] Literal too big\r\n", True)]
    check_all_chunkings(functools.partial(ResponseParser, Limits(max_literal=10)), wire, expected)
