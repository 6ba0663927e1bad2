"""The epoll relay engine (`relay.engine: epoll`, proxy/relay/engine*.py) against a real Dovecot
with real clients: sessions really run in it (its gauge), backpressure bounds the proxy's memory,
timers and the drain act on parked sessions, a reset mid-literal ends one session only, COMPRESS
is handed back to the task path. The other relay tests run on the engine too with
MAILPROXY_TEST_RELAY_ENGINE=epoll."""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import signal
import socket
import struct
import urllib.request
import zlib

import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

HOST = "127.0.0.1"


def engine_proxy(proxy_factory, dovecot, **listener):
    config = relay_config(dovecot, allow_plaintext_auth=True, **listener)
    config["relay"] = {"engine": "epoll"}
    return proxy_factory(config)


def engine_sessions(proxy) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("mailproxy_relay_engine_sessions "):
                return float(line.split()[1])
    raise AssertionError("no mailproxy_relay_engine_sessions in /metrics")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_login(proxy, user, protocol: str = "imap") -> tuple[socket.socket, object]:
    sock = socket.create_connection((HOST, proxy.port(protocol)), timeout=30)
    file = sock.makefile("rb")
    file.readline()
    name, password = user
    if protocol == "imap":
        sock.sendall(b"a LOGIN %s %s\r\n" % (name.encode(), password.encode()))
        assert file.readline().startswith(b"a OK")
    else:
        sock.sendall(b"USER %s\r\nPASS %s\r\n" % (name.encode(), password.encode()))
        assert file.readline().startswith(b"+OK")
        assert file.readline().startswith(b"+OK")
    return sock, file


def test_imap_and_pop3_sessions_run_in_the_engine(proxy_factory, dovecot, user):
    proxy = engine_proxy(proxy_factory, dovecot)
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    imap.login(*user)
    pop = poplib.POP3(HOST, proxy.port("pop3"), timeout=30)
    pop.user(user[0])
    pop.pass_(user[1])
    assert wait_for(lambda: engine_sessions(proxy) == 2, "both sessions in the engine")
    assert imap.select("INBOX")[0] == "OK"
    assert imap.noop()[0] == "OK"
    assert pop.stat()[0] >= 1
    assert pop.capa()   # answered by the proxy, in order
    imap.logout()
    pop.quit()
    assert wait_for(lambda: engine_sessions(proxy) == 0, "both sessions out of the engine")
    # (the session_end lines follow the engine's release: wait for them too; after LOGOUT/QUIT
    # the client's close may be read before the upstream's, as on the task path)
    ends = wait_for(lambda: [line for line in proxy.logs().splitlines()
                             if "event=session_end" in line and "upstream=main" in line]
                    if proxy.logs().count("event=session_end") >= 2 else None, "two session ends")
    assert len(ends) == 2 and all("reason=client_logout" in line or "reason=client_closed" in line
                                  for line in ends), ends


def _proxy_upstream_rx_queue(pid: int, upstream_port: int) -> int:
    """Bytes waiting unread in the proxy's socket from the upstream (/proc/net/tcp rx_queue)."""
    import os
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].split(":")[1], 16) == upstream_port:
                return int(fields[4].split(":")[1], 16)
    return 0


def deliver_big(dovecot, user) -> bytes:
    """A 40 MB message delivered to `user`; returns its body."""
    body = (b"x" * 76 + b"\r\n") * (40 * 1024 * 1024 // 78)
    dovecot.deliver(user[0], b"Subject: big\r\n\r\n" + body)
    return body


def unread_fetch_bounds_memory(proxy, dovecot, sock, file, body: bytes) -> None:
    """On a session with INBOX selected (the socket and its reader): while the client reads
    nothing of a FETCH of `body`, the proxy stops reading the upstream (its bytes wait in the
    kernel, not in the proxy: RSS grows < 8 MB); then every byte arrives intact."""
    before = rss_kb(proxy.pid)
    sock.sendall(b"f FETCH * BODY.PEEK[TEXT]\r\n")
    wait_for(lambda: _proxy_upstream_rx_queue(proxy.pid, dovecot.imap_port) > 0,
             "the proxy to stop reading the upstream")
    grown = rss_kb(proxy.pid) - before
    assert grown < 8 * 1024, f"proxy RSS grew {grown} KB for a {len(body) // 1024} KB FETCH not read"
    head = file.readline()
    assert head.endswith(b"{%d}\r\n" % len(body)), head
    digest = hashlib.sha256()
    left = len(body)
    while left:
        chunk = file.read(min(left, 1 << 20))
        assert chunk
        digest.update(chunk)
        left -= len(chunk)
    assert digest.digest() == hashlib.sha256(body).digest()
    assert file.readline() == b")\r\n"
    assert file.readline().startswith(b"f OK")


def test_slow_client_reading_a_big_fetch_bounds_proxy_memory(proxy_factory, dovecot, user):
    """Backpressure on a plain session (unread_fetch_bounds_memory)."""
    body = deliver_big(dovecot, user)
    proxy = engine_proxy(proxy_factory, dovecot)
    sock, file = raw_login(proxy, user)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"s SELECT INBOX\r\n")
    while not file.readline().startswith(b"s OK"):
        pass
    unread_fetch_bounds_memory(proxy, dovecot, sock, file, body)
    sock.close()


def test_many_sessions_in_the_engine(proxy_factory, dovecot, user):
    proxy = engine_proxy(proxy_factory, dovecot)
    sessions = [raw_login(proxy, user) for _ in range(100)]
    assert wait_for(lambda: engine_sessions(proxy) == 100, "100 sessions in the engine")
    for index, (sock, _) in enumerate(sessions):   # pipelined: every session has one in flight
        sock.sendall(b"n%d NOOP\r\n" % index)
    for index, (_, file) in enumerate(sessions):
        assert file.readline().startswith(b"n%d OK NOOP completed" % index)
    for sock, file in sessions:
        file.close()   # (the socket closes only once its file is closed too)
        sock.close()
    assert wait_for(lambda: engine_sessions(proxy) == 0, "every session out of the engine")


def test_drain_says_bye_to_parked_sessions(proxy_factory, dovecot, user):
    proxy = engine_proxy(proxy_factory, dovecot)
    idle_sock, idle_file = raw_login(proxy, user)
    idle_sock.sendall(b"s SELECT INBOX\r\n")
    while not idle_file.readline().startswith(b"s OK"):
        pass
    idle_sock.sendall(b"i IDLE\r\n")
    assert idle_file.readline().startswith(b"+ ")
    quiet_sock, quiet_file = raw_login(proxy, user)
    pop_sock, pop_file = raw_login(proxy, user, "pop3")
    assert wait_for(lambda: engine_sessions(proxy) == 3, "3 sessions in the engine")
    proxy.send_signal(signal.SIGTERM)
    assert idle_file.readline() == b"* BYE Server shutting down.\r\n"
    assert quiet_file.readline() == b"* BYE Server shutting down.\r\n"
    assert idle_file.readline() == b"" and quiet_file.readline() == b""
    assert pop_file.readline() == b""   # POP3: closed, nothing owed
    assert proxy.wait(timeout=20) == 0
    for sock in (idle_sock, quiet_sock, pop_sock):
        sock.close()


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_idle_timeout_fires_in_the_engine(proxy_factory, dovecot, user, protocol):
    # (3 s, not 1: the scrape below must see the session in the engine before its timer ends it)
    proxy = engine_proxy(proxy_factory, dovecot, timeouts={"idle": "3s"})
    sock, file = raw_login(proxy, user, protocol)
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
    if protocol == "imap":
        assert file.readline() == b"* BYE Autologout; idle for too long.\r\n"
    assert file.readline() == b""   # RFC 1939 3: POP3 closes without a word
    wait_for(lambda: "reason=idle_timeout" in proxy.logs(), "the idle_timeout session end")
    sock.close()


def test_an_idle_command_times_out_in_the_engine(proxy_factory, dovecot, user):
    """RFC 2177: an IDLE past `idle_command` ends though `idle` is longer. Its timer moves
    earlier, so the engine must look at the session's timer after the IDLE's steps (they are
    never "settled", engine_imap.py) even though a plain command and its answer are."""
    proxy = engine_proxy(proxy_factory, dovecot, timeouts={
        "idle": "10m", "idle_command": "1s", "upstream_response": "10m"})
    sock, file = raw_login(proxy, user)
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
    sock.sendall(b"b NOOP\r\n")
    assert file.readline().startswith(b"b OK")
    sock.sendall(b"c IDLE\r\n")
    assert file.readline().startswith(b"+ ")
    assert file.readline() == b"* BYE Autologout; idle for too long.\r\n"   # (30 s socket bound)
    wait_for(lambda: "reason=idle_timeout" in proxy.logs(), "the idle_timeout session end")
    sock.close()


def test_reset_mid_literal_ends_that_session_only(proxy_factory, dovecot, user):
    proxy = engine_proxy(proxy_factory, dovecot)
    other, other_file = raw_login(proxy, user)
    sock, file = raw_login(proxy, user)
    sock.sendall(b"p APPEND INBOX {1000000}\r\n")
    assert file.readline().startswith(b"+ ")
    sock.sendall(b"y" * 300000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    file.close()
    sock.close()   # an RST with the literal two thirds sent
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the reset session out of the engine")
    other.sendall(b"n NOOP\r\n")
    assert other_file.readline().startswith(b"n OK NOOP completed")
    other.close()


def compress_handed_back(proxy, sock, file) -> None:
    """RFC 4978 on a logged-in session (the socket and its reader): the engine forwards
    COMPRESS DEFLATE and hands the session back; the task path inflates from there and the
    session goes on compressed (two NOOPs, then LOGOUT answered before the proxy closes)."""
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
    sock.sendall(b"z COMPRESS DEFLATE\r\n")
    assert file.readline().startswith(b"z OK")
    assert engine_sessions(proxy) == 0
    deflate = zlib.compressobj(wbits=-15)
    inflate = zlib.decompressobj(wbits=-15)
    for tag in (b"n1", b"n2"):
        sock.sendall(deflate.compress(tag + b" NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
        plain = b""
        while b"\r\n" not in plain:
            chunk = sock.recv(65536)
            assert chunk
            plain += inflate.decompress(chunk)
        assert plain.startswith(tag + b" OK NOOP completed") and plain.endswith(b"\r\n"), plain
    sock.sendall(deflate.compress(b"l LOGOUT\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    plain = b""
    while chunk := sock.recv(65536):   # until the proxy closes
        plain += inflate.decompress(chunk)
    assert plain.startswith(b"* BYE") and b"l OK" in plain, plain
    file.close()
    sock.close()


def test_compress_is_handed_back_to_the_task_path(proxy_factory, dovecot_factory):
    from .test_compress_relay import ZLIB

    zlib_dovecot = dovecot_factory(extra_config=ZLIB)
    user = zlib_dovecot.add_user()
    proxy = engine_proxy(proxy_factory, zlib_dovecot)
    compress_handed_back(proxy, *raw_login(proxy, user))
