"""COMPRESS=DEFLATE (RFC 4978) on gateway sessions (issue 17): a mobile-style session (COMPRESS,
ENABLE QRESYNC, SELECT with QRESYNC, IDLE with pushes from another device, resync) through
imaplib with a deflate wrapper; compression bombs that must meet the ordinary line and literal
limits; a corrupt stream; COMPRESS twice."""

from __future__ import annotations

import re
import socket
import zlib

import trio

from support.deflate_imap import DeflateIMAP4
from support.deflate_imap import Inflating as _Inflating

from .conftest import message

run = trio.to_thread.run_sync


def _login(gateway) -> DeflateIMAP4:
    client = DeflateIMAP4("127.0.0.1", gateway.port, timeout=20)
    assert "COMPRESS=DEFLATE" not in client.capabilities   # the pre-login front cannot
    client.login(gateway.user, gateway.password)
    assert b"COMPRESS=DEFLATE" in client.capability()[1][0].split()   # once logged in
    client.compress()
    return client


async def test_mobile_session_compress_idle_qresync(gateway):
    for n in range(5):
        gateway.deliver(message(n))

    def scenario():
        phone = _login(gateway)
        typ, data = phone._simple_command("ENABLE", "QRESYNC")
        assert typ == "OK" and phone.untagged_responses.pop("ENABLED") == [b"QRESYNC"]
        typ, data = phone.select("INBOX")
        assert typ == "OK" and data == [b"5"]
        validity = int(phone.untagged_responses["UIDVALIDITY"][0])
        highest = int(phone.untagged_responses["HIGHESTMODSEQ"][0])
        typ, data = phone.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and sum(1 for d in data if isinstance(d, tuple)) == 5
        # IDLE while another device changes the mailbox: the pushes arrive compressed
        tag = phone._new_tag()
        phone.send(tag + b" IDLE\r\n")
        assert phone.readline().startswith(b"+")
        laptop = gateway.imaplib()
        laptop.select("INBOX")
        laptop.store("2", "+FLAGS", "(\\Flagged)")
        laptop.store("5", "+FLAGS", "(\\Deleted)")
        laptop.expunge()
        pushed = [phone.readline()]
        while not pushed[-1].startswith(b"* VANISHED") and len(pushed) < 5:
            pushed.append(phone.readline())
        pushed = [re.sub(rb"MODSEQ \(\d+\)", b"MODSEQ (n)", line) for line in pushed]
        # 5's \\Deleted may or may not be pushed before its expunge (both are allowed)
        assert pushed in ([b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (n))\r\n",
                           b"* 5 FETCH (UID 5 FLAGS (\\Deleted \\Recent) MODSEQ (n))\r\n",
                           b"* VANISHED 5\r\n"],
                          [b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (n))\r\n",
                           b"* VANISHED 5\r\n"]), pushed
        phone.send(b"DONE\r\n")
        assert phone.readline().startswith(tag + b" OK")
        phone.logout()
        # offline resync with QRESYNC, compressed again on a new connection
        laptop.store("1", "+FLAGS", "(\\Seen)")
        laptop.logout()
        phone = _login(gateway)
        phone._simple_command("ENABLE", "QRESYNC")
        typ, data = phone._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {highest}))")
        assert typ == "OK", data
        fetches = phone.untagged_responses.pop("FETCH", [])
        assert sorted(re.sub(rb" MODSEQ \(\d+\)", b"", f) for f in fetches) == [
            b"1 (UID 1 FLAGS (\\Seen))", b"2 (UID 2 FLAGS (\\Flagged))"], fetches
        assert phone.untagged_responses.pop("VANISHED") == [b"(EARLIER) 5"]
        phone.logout()

    await run(scenario)


def _compressed_session(gateway):
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=20)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (gateway.user.encode(), gateway.password.encode()))
    while not file.readline().startswith(b"a OK"):
        pass
    sock.sendall(b"b COMPRESS DEFLATE\r\n")
    assert file.readline().startswith(b"b OK")
    return sock, zlib.compressobj(9, zlib.DEFLATED, -15), _Inflating(sock)


async def test_compression_bomb_meets_the_line_limit(gateway):
    limits = gateway.listener.limits

    def scenario():
        sock, deflate, reader = _compressed_session(gateway)
        # a line of 64 MiB of "A" without CRLF: about 64 KB on the wire
        sock.sendall(deflate.compress(b"c NOOP "))
        block = b"A" * (1 << 20)
        sent_compressed = 0
        try:
            for _ in range(64):
                chunk = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
                sent_compressed += len(chunk)
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server closed the session as soon as the resync budget ran out
        assert sent_compressed < 200_000
        lines = []
        try:
            while True:
                lines.append(reader.readline())
        except (EOFError, ConnectionResetError):
            pass
        assert lines[0] == b"c BAD [TOOBIG] Line too long\r\n", lines
        assert lines[-1].startswith(b"* BYE"), lines
        sock.close()
        # other sessions never noticed
        other = gateway.imaplib()
        assert other.noop()[0] == "OK"
        other.logout()

    assert limits.max_line * 16 < 64 << 20   # the bomb is past the resync budget
    await run(scenario)


async def test_compressed_literal_over_the_limit_is_refused(gateway):
    def scenario():
        sock, deflate, reader = _compressed_session(gateway)
        too_big = gateway.listener.limits.max_literal + 1
        sock.sendall(deflate.compress(b"c APPEND INBOX {%d}\r\n" % too_big)
                     + deflate.flush(zlib.Z_SYNC_FLUSH))
        assert reader.readline().startswith(b"c BAD")
        sock.sendall(deflate.compress(b"d COMPRESS DEFLATE\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
        assert reader.readline() == b"d NO [COMPRESSIONACTIVE] Compression is already active.\r\n"
        sock.sendall(deflate.compress(b"e NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
        assert reader.readline() == b"e OK NOOP completed.\r\n"
        sock.sendall(b"\xff garbage that is not DEFLATE" * 10)   # a corrupt stream ends it
        try:
            assert reader.readline() == b""
        except (EOFError, ConnectionResetError):
            pass
        sock.close()

    await run(scenario)
