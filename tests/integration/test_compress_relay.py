"""COMPRESS=DEFLATE (RFC 4978) through the IMAP relay to a real Dovecot (imap_zlib plugin), with
imaplib wrapped in zlib: the proxy passes the compressed bytes through and inflates a copy for
its parser, so FETCH bytes are identical to Dovecot's, IDLE and the per-command metrics still
work, and a decompression bomb meets the listener's line and literal limits (BAD [TOOBIG] and
BYE, written into the upstream's DEFLATE stream) without touching other sessions."""

from __future__ import annotations

import hashlib
import imaplib
import os
import socket
import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.deflate_imap import DeflateIMAP4, Inflating
from support.polling import wait_for
from support.proxyproc import relay_config

from .test_observability import metrics_text, wait_idle

HOST = "127.0.0.1"
ZLIB = """
mail_plugins = $mail_plugins zlib
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
}
"""


@pytest.fixture
def zlib_dovecot(dovecot_factory):
    return dovecot_factory(extra_config=ZLIB)


@pytest.fixture
def compress_proxy(zlib_dovecot, proxy_factory):
    config = relay_config(zlib_dovecot, listeners=("imap",), allow_plaintext_auth=True,
                          limits={"max_line": 8192, "max_literal": 1024 * 1024})
    return proxy_factory(config)


def message(subject: str, body: bytes) -> bytes:
    return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject.encode()
            + b"\r\n\r\n" + body)


def commands(proxy) -> dict[tuple[str, str], float]:
    """mailproxy_commands_total for IMAP, by (command, status)."""
    found = {}
    for family in text_string_to_metric_families(metrics_text(proxy)):
        for sample in family.samples:
            if sample.name == "mailproxy_commands_total" and sample.labels["protocol"] == "imap":
                found[sample.labels["command"], sample.labels["status"]] = sample.value
    return found


def counted_more(proxy, key: tuple[str, str], than: float) -> dict[tuple[str, str], float] | None:
    """`commands(proxy)` once `key` has been counted more than `than` times, else None."""
    found = commands(proxy)
    return found if found.get(key, 0) > than else None


def compressed_session(proxy, user: str, password: str):
    """A raw socket logged in through the proxy, COMPRESS on: (socket, deflater, reader)."""
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    ok = file.readline()
    assert ok.startswith(b"a OK") and b"COMPRESS=DEFLATE" in ok, ok
    sock.sendall(b"b COMPRESS DEFLATE\r\n")
    assert file.readline().startswith(b"b OK")
    return sock, zlib.compressobj(9, zlib.DEFLATED, -15), Inflating(sock)


def read_to_eof(reader: Inflating) -> list[bytes]:
    lines = []
    try:
        while True:
            lines.append(reader.readline())
    except (EOFError, ConnectionResetError):
        pass
    return lines


def test_compressed_session_is_byte_identical_and_metered(zlib_dovecot, compress_proxy):
    user, password = zlib_dovecot.add_user()
    bodies = [os.urandom(300_000).hex().encode() + b"\r\n", b"Hello.\r\n" * 5000, b"Short.\r\n"]
    for n, body in enumerate(bodies):
        zlib_dovecot.deliver(user, message(f"m{n}", body))
    direct = imaplib.IMAP4(HOST, zlib_dovecot.imap_port)
    direct.login(user, password)
    direct.select("INBOX", readonly=True)
    typ, expected = direct.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    direct.logout()

    phone = DeflateIMAP4(HOST, compress_proxy.port("imap"), timeout=30)
    phone.login(user, password)
    # the proxy is shared by this module's tests: other sessions' CAPABILITYs are counted too
    capabilities = commands(compress_proxy).get(("CAPABILITY", "OK"), 0)
    assert b"COMPRESS=DEFLATE" in phone.capability()[1][0].split()
    # the relay forwards a reply before it counts it: wait until this CAPABILITY is counted
    before = wait_for(lambda: counted_more(compress_proxy, ("CAPABILITY", "OK"), capabilities),
                      "the CAPABILITY counted")
    phone.compress()
    assert phone.select("INBOX") == ("OK", [b"3"])
    typ, fetched = phone.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    assert [hashlib.sha256(part[1]).hexdigest() for part in fetched if isinstance(part, tuple)] \
        == [hashlib.sha256(part[1]).hexdigest() for part in expected if isinstance(part, tuple)]
    # IDLE and DONE inside the compressed stream: the relay still sees where IDLE ends
    tag = phone._new_tag()
    phone.send(tag + b" IDLE\r\n")
    assert phone.readline().startswith(b"+")
    phone.send(b"DONE\r\n")
    assert phone.readline().startswith(tag + b" OK")
    assert phone.noop()[0] == "OK"
    phone.logout()
    wait_idle(compress_proxy)   # the session has ended: every reply is counted
    after = commands(compress_proxy)
    counted = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert {key: n for key, n in counted.items() if n} == {
        ("COMPRESS", "OK"): 1, ("SELECT", "OK"): 1, ("FETCH", "OK"): 1, ("IDLE", "OK"): 1,
        ("NOOP", "OK"): 1, ("LOGOUT", "OK"): 1}


def test_compression_bomb_meets_the_line_limit(zlib_dovecot, compress_proxy):
    user, password = zlib_dovecot.add_user()
    other = imaplib.IMAP4(HOST, compress_proxy.port("imap"), timeout=30)
    other.login(user, password)
    sock, deflate, reader = compressed_session(compress_proxy, user, password)
    # a line of 64 MiB of "A" without CRLF: about 64 KB on the wire
    sock.sendall(deflate.compress(b"c NOOP "))
    sent_compressed = 0
    try:
        for _ in range(64):
            chunk = deflate.compress(b"A" * (1 << 20)) + deflate.flush(zlib.Z_SYNC_FLUSH)
            sent_compressed += len(chunk)
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass   # the proxy closed the session at the limit
    assert sent_compressed < 200_000
    lines = read_to_eof(reader)
    assert lines == [b"c BAD [TOOBIG] Line too long\r\n", b"* BYE Protocol error, closing.\r\n"]
    sock.close()
    assert other.noop()[0] == "OK"   # other sessions never noticed
    other.logout()
    assert "event=limit_hit" in compress_proxy.logs() and "limit=line_length" in compress_proxy.logs()


def test_compressed_literal_over_the_limit_and_a_corrupt_stream(zlib_dovecot, compress_proxy):
    user, password = zlib_dovecot.add_user()
    sock, deflate, reader = compressed_session(compress_proxy, user, password)
    sock.sendall(deflate.compress(b"c NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    assert reader.readline().startswith(b"c OK NOOP completed")
    sock.sendall(deflate.compress(b"d APPEND INBOX {%d+}\r\n" % (1024 * 1024 + 1))
                 + deflate.flush(zlib.Z_SYNC_FLUSH))
    # a non-synchronizing literal's bytes follow anyway: past the limit the session ends
    # (RFC 7888 4), as it does for plain input
    assert read_to_eof(reader) == [b"* BYE [TOOBIG] Literal too big\r\n"]
    sock.close()

    sock, deflate, reader = compressed_session(compress_proxy, user, password)
    sock.sendall(b"\xff garbage that is not DEFLATE" * 10)
    assert read_to_eof(reader) == [b"* BYE Corrupt compressed data.\r\n"]
    sock.close()
