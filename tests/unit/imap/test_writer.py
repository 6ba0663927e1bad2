"""writer: exact encodings."""

from __future__ import annotations

import pytest

from proxy.imap import ProtocolError, writer


@pytest.mark.parametrize(
    "value, wire",
    [
        (b"INBOX", b"INBOX"),
        (b"a[b", b"a[b"),
        (b"", b'""'),
        (b"NIL", b'"NIL"'),
        (b"two words", b'"two words"'),
        (b'q"b\\s', b'"q\\"b\\\\s"'),
        (b"a]b", b'"a]b"'),
        (b"\xc3\xa9", b"{2}\r\n\xc3\xa9"),
        (b"a\r\nb", b"{4}\r\na\r\nb"),
    ],
)
def test_astring(value: bytes, wire: bytes) -> None:
    assert writer.astring(value) == wire


def test_literals_and_quoted() -> None:
    assert writer.literal_plus(b"abc") == b"{3+}\r\nabc"
    assert writer.literal(b"") == b"{0}\r\n"
    with pytest.raises(ValueError):
        writer.quoted(b"a\nb")


def test_lines() -> None:
    assert writer.format_command(b"A1", b"LOGIN", b"u", b'"p w"') == b'A1 LOGIN u "p w"\r\n'
    assert writer.tagged(b"A1", b"NO", b"Quota", b"OVERQUOTA") == b"A1 NO [OVERQUOTA] Quota\r\n"
    assert writer.tagged(b"A1", b"OK", b"done") == b"A1 OK done\r\n"
    assert writer.untagged(b"3 EXISTS") == b"* 3 EXISTS\r\n"
    assert writer.continuation() == b"+ \r\n"
    assert writer.continuation(b"Ready") == b"+ Ready\r\n"


@pytest.mark.parametrize("call", [
    lambda: writer.tagged(b"A1", b"OK", b"x\r\n* BYE"),
    lambda: writer.untagged(b"x\ny"),
    lambda: writer.continuation(b"\x00"),
    lambda: writer.format_command(b"A1\r\n", b"NOOP"),
])
def test_line_injection_rejected(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_protocol_error_reply_forms() -> None:
    assert ProtocolError("literal_too_big", "Literal too big", tag=b"A1").reply() == (
        b"A1 BAD [TOOBIG] Literal too big\r\n"
    )
    assert ProtocolError("bad_syntax", "Invalid tag").reply() == b"* BAD [CLIENTBUG] Invalid tag\r\n"
    fatal = ProtocolError("line_too_long", "Line too long", tag=b"A1", fatal=True)
    assert (fatal.reply_status, fatal.reply()) == (b"BYE", b"* BYE [TOOBIG] Line too long\r\n")
