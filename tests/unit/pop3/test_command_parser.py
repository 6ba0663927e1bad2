"""CommandParser: bytes in, events out, at every split."""

from __future__ import annotations

import pytest

from proxy.pop3 import NEED_DATA, PREAUTH_LIMITS, CommandParser, Limits, ProtocolError
from proxy.pop3.events import Command, ConnectionClosed, RawLine

from .helpers import Error, check_every_split, drive, sasl_script

CLOSED = ConnectionClosed()


def cmd(raw: bytes, name: bytes, *args: bytes) -> Command:
    return Command(name, args, raw)


COMMAND_TABLE = [
    pytest.param(
        b"USER alice\r\nPASS  secret with spaces \r\n",
        [
            cmd(b"USER alice", b"USER", b"alice"),
            # RFC 1939 §7: the rest of the line is the password, spaces and all.
            cmd(b"PASS  secret with spaces ", b"PASS", b" secret with spaces "),
            CLOSED,
        ],
        id="user-pass-spaces",
    ),
    pytest.param(
        b"user Alice\r\npass\r\nPASS \r\n",
        [
            cmd(b"user Alice", b"USER", b"Alice"),
            cmd(b"pass", b"PASS"),
            cmd(b"PASS ", b"PASS", b""),
            CLOSED,
        ],
        id="case-insensitive-and-empty-pass",
    ),
    pytest.param(
        b"LIST\r\nLIST 2\r\nUIDL\r\nUIDL 7\r\nLIST \r\n",
        [
            cmd(b"LIST", b"LIST"),
            cmd(b"LIST 2", b"LIST", b"2"),
            cmd(b"UIDL", b"UIDL"),
            cmd(b"UIDL 7", b"UIDL", b"7"),
            cmd(b"LIST ", b"LIST"),  # trailing space tolerated: still "no argument"
            CLOSED,
        ],
        id="list-uidl",
    ),
    pytest.param(
        b"CAPA\r\nSTAT\r\nRETR 1\r\nTOP 1 10\r\nDELE 1\r\nNOOP\r\nRSET\r\nQUIT\r\n",
        [
            cmd(b"CAPA", b"CAPA"),
            cmd(b"STAT", b"STAT"),
            cmd(b"RETR 1", b"RETR", b"1"),
            cmd(b"TOP 1 10", b"TOP", b"1", b"10"),
            cmd(b"DELE 1", b"DELE", b"1"),
            cmd(b"NOOP", b"NOOP"),
            cmd(b"RSET", b"RSET"),
            cmd(b"QUIT", b"QUIT"),
            CLOSED,
        ],
        id="pipelined",
    ),
    pytest.param(
        b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
        [cmd(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb", b"APOP", b"mrose",
             b"c4c9334bac560ecc979e58001b3e22fb"), CLOSED],
        id="apop",
    ),
    pytest.param(b"NOOP\nSTAT\r\n", [cmd(b"NOOP", b"NOOP"), cmd(b"STAT", b"STAT"), CLOSED],
                 id="bare-lf"),
    pytest.param(b"NOOP\r\nQU", [cmd(b"NOOP", b"NOOP"), CLOSED], id="partial-line-at-eof"),
    pytest.param(b"", [CLOSED], id="empty"),
    pytest.param(
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nSTAT\r\n",
        [cmd(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH", b"PLAIN", b"AGFsaWNlAHNlY3JldA=="),
         cmd(b"STAT", b"STAT"), CLOSED],
        id="auth-plain-initial-response",
    ),
]


@pytest.mark.parametrize(("wire", "expected"), COMMAND_TABLE)
def test_commands(wire: bytes, expected: list[object]) -> None:
    check_every_split(CommandParser, wire, expected)


SASL_TABLE = [
    pytest.param(
        b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nSTAT\r\n",
        [cmd(b"AUTH LOGIN", b"AUTH", b"LOGIN"), RawLine(b"YWxpY2U="), RawLine(b"c2VjcmV0"),
         cmd(b"STAT", b"STAT"), CLOSED],
        2,
        id="auth-login",
    ),
    pytest.param(
        # RFC 5034 §4: "*" cancels; the next line is a command again.
        b"AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\nYWxpY2U=\r\n*\r\nQUIT\r\n",
        [cmd(b"AUTH LOGIN", b"AUTH", b"LOGIN"), RawLine(b"*"),
         cmd(b"AUTH LOGIN", b"AUTH", b"LOGIN"), RawLine(b"YWxpY2U="), RawLine(b"*"),
         cmd(b"QUIT", b"QUIT"), CLOSED],
        2,
        id="auth-cancel",
    ),
    pytest.param(
        b"AUTH PLAIN\r\n\r\nNOOP\r\n",  # an empty SASL response is a RawLine, not bad syntax
        [cmd(b"AUTH PLAIN", b"AUTH", b"PLAIN"), RawLine(b""), cmd(b"NOOP", b"NOOP"), CLOSED],
        1,
        id="auth-empty-response",
    ),
]


@pytest.mark.parametrize(("wire", "expected", "sasl_lines"), SASL_TABLE)
def test_sasl_exchange(wire: bytes, expected: list[object], sasl_lines: int) -> None:
    check_every_split(CommandParser, wire, expected, sasl_script(sasl_lines))


SMALL = Limits(max_command_line=16)

MALFORMED_TABLE = [
    pytest.param(
        b"NOOP\r\n" + b"X" * 40 + b"\r\nSTAT\r\n",
        [cmd(b"NOOP", b"NOOP"), Error("line_too_long"), cmd(b"STAT", b"STAT"), CLOSED],
        id="overlong-then-resync",
    ),
    pytest.param(
        b"USER 123456789\r\nUSER 1234567890\r\nNOOP\r\n",  # 16 bytes ok, 17 too long
        [cmd(b"USER 123456789", b"USER", b"123456789"), Error("line_too_long"),
         cmd(b"NOOP", b"NOOP"), CLOSED],
        id="limit-boundary",
    ),
    pytest.param(b"Y" * 40, [Error("line_too_long"), CLOSED], id="overlong-unterminated"),
    pytest.param(b"\r\nNOOP\r\n", [Error("bad_syntax"), cmd(b"NOOP", b"NOOP"), CLOSED],
                 id="empty-line"),
    pytest.param(b"LIST  1\r\n", [Error("bad_syntax"), CLOSED], id="double-space"),
    pytest.param(b"NO-OP\r\n", [Error("bad_syntax"), CLOSED], id="bad-keyword"),
    pytest.param(b" NOOP\r\n", [Error("bad_syntax"), CLOSED], id="leading-space"),
    pytest.param(b"US\x00ER\r\n", [Error("bad_syntax"), CLOSED], id="nul"),
    pytest.param(b"USER a\rb\r\n", [Error("bad_syntax"), CLOSED], id="bare-cr"),
    pytest.param(
        b"AUTH LOGIN\r\n" + b"A" * 20 + b"\r\nNOOP\r\n",  # the SASL exchange is abandoned
        [cmd(b"AUTH LOGIN", b"AUTH", b"LOGIN"), Error("line_too_long"), cmd(b"NOOP", b"NOOP"),
         CLOSED],
        id="overlong-sasl-line",
    ),
]


@pytest.mark.parametrize(("wire", "expected"), MALFORMED_TABLE)
def test_malformed_commands(wire: bytes, expected: list[object]) -> None:
    check_every_split(lambda: CommandParser(SMALL), wire, expected, sasl_script(2))


def test_error_reply_and_text_never_echo_input() -> None:
    parser = CommandParser(SMALL)
    parser.receive_data(b"SECRETSECRETSECRET\r\n")
    with pytest.raises(Exception) as info:
        parser.next_event()
    exc = info.value
    assert (exc.kind, exc.fatal, exc.reply()) == ("line_too_long", False, b"-ERR Line too long\r\n")
    parser.receive_data(b"PA\x00SS hunter2\r\n")
    with pytest.raises(Exception) as info:
        parser.next_event()
    assert info.value.reply() == b"-ERR Syntax error\r\n"
    assert b"hunter2" not in info.value.reply() and "hunter2" not in str(info.value)


def test_buffered() -> None:
    parser = CommandParser(PREAUTH_LIMITS)
    parser.receive_data(b"NOOP\r\nST")
    assert parser.buffered == 8
    assert parser.next_event() == cmd(b"NOOP", b"NOOP")
    assert parser.buffered == 2


def test_preauth_limits() -> None:
    assert PREAUTH_LIMITS.max_command_line == 2048
    assert Limits().max_command_line == 8192 and Limits().max_response_line == 8192
    with pytest.raises(ValueError):
        Limits(max_command_line=0)


def test_overlong_line_dropped_as_it_arrives() -> None:
    parser = CommandParser(SMALL)
    got = drive(parser, [b"X" * 20, b"X" * 1000, b"X" * 1000, b"\r\nNOOP\r\n"])
    assert got == [Error("line_too_long"), cmd(b"NOOP", b"NOOP"), CLOSED]


def test_skipping_keeps_buffer_small() -> None:
    parser = CommandParser(SMALL)
    parser.receive_data(b"X" * 20)
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert caught.value.kind == "line_too_long"
    parser.receive_data(b"X" * 10_000)
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 0


def test_data_after_eof_is_a_caller_bug() -> None:
    parser = CommandParser()
    parser.receive_data(b"")
    assert parser.next_event() == CLOSED
    assert parser.next_event() == CLOSED
    with pytest.raises(RuntimeError):
        parser.receive_data(b"NOOP\r\n")
