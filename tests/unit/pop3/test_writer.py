"""writer: exact wire bytes."""

from __future__ import annotations

import pytest

from proxy.pop3 import writer


@pytest.mark.parametrize(
    ("built", "wire"),
    [
        (writer.ok(), b"+OK\r\n"),
        (writer.ok(b"2 320"), b"+OK 2 320\r\n"),
        (writer.ok(b"welcome", b"IN-USE"), b"+OK [IN-USE] welcome\r\n"),
        (writer.err(b"Authentication failed", b"AUTH"), b"-ERR [AUTH] Authentication failed\r\n"),
        (writer.err(b"no such message"), b"-ERR no such message\r\n"),
        (writer.err(b"", b"SYS/TEMP"), b"-ERR [SYS/TEMP]\r\n"),
        (writer.continuation(), b"+ \r\n"),
        (writer.continuation(b"VXNlcm5hbWU6"), b"+ VXNlcm5hbWU6\r\n"),
        (writer.command(b"RETR", b"1"), b"RETR 1\r\n"),
        (writer.command(b"PASS", b"with spaces"), b"PASS with spaces\r\n"),
        (writer.command(b"QUIT"), b"QUIT\r\n"),
        (writer.line(b"*"), b"*\r\n"),
        (writer.dot_stuff(b".a\r\nb\r\n..c\r\n"), b"..a\r\nb\r\n...c\r\n"),
        (writer.dot_stuff(b""), b""),
        (writer.multiline(b""), b".\r\n"),
        (writer.multiline(b"a\r\n.\r\n"), b"a\r\n..\r\n.\r\n"),
        (writer.multiline(b"no final newline"), b"no final newline\r\n.\r\n"),
        (writer.multiline(b"bare\nlf\r\n.x\n"), b"bare\r\nlf\r\n..x\r\n.\r\n"),
        (writer.multiline([b"TOP", b"UIDL", b".hidden"]), b"TOP\r\nUIDL\r\n..hidden\r\n.\r\n"),
        (writer.multiline([]), b".\r\n"),
    ],
)
def test_writer(built: bytes, wire: bytes) -> None:
    assert built == wire


@pytest.mark.parametrize(
    "call",
    [
        lambda: writer.ok(b"a\r\nb"),
        lambda: writer.err(b"x", b"A\n"),
        lambda: writer.command(b"USER", b"a\r\nDELE 1"),
        lambda: writer.continuation(b"\r"),
        lambda: writer.multiline([b"a\r\n"]),
    ],
)
def test_writer_refuses_line_breaks(call) -> None:
    with pytest.raises(ValueError):
        call()
