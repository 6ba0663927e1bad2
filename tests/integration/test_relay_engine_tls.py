"""TLS sessions in the epoll relay engine (`relay.engine: epoll`, proxy/relay/engine.py driving
net/tls_engine.py): implicit TLS, STARTTLS/STLS and upstream TLS sessions really run in it (its
gauge), with real clients (imaplib, poplib, curl) against a real Dovecot; backpressure bounds the
proxy's memory under a slow TLS reader; a peer that resets mid-record, or asks to renegotiate,
ends that session only; the drain's BYE arrives over TLS followed by a close_notify; COMPRESS
hands the session back to the task path with its TLS state.
test_tls.py runs its client- and upstream-TLS cases on both relay paths too."""

from __future__ import annotations

import hashlib
import imaplib
import os
import poplib
import signal
import socket
import ssl
import struct
import subprocess
import zlib

import pytest
import trustme

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_relay_engine import _proxy_upstream_rx_queue, engine_sessions, rss_kb
from .test_tls import client_context, read_until, write_pair

HOST = "127.0.0.1"
TIMEOUT = 30


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, dovecot_root):
    """(cert, key) for localhost/127.0.0.1, and the CA file, readable by Dovecot."""
    directory = dovecot_root / f"engine-tls-{os.getpid()}"
    cert, key = write_pair(ca.issue_cert("localhost", "127.0.0.1"), directory, "main")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ca_path.chmod(0o644)
    return cert, key, str(ca_path)


def tls_proxy(proxy_factory, dovecot, cert_files, upstream_tls: str = "none"):
    """Listeners imaps/pop3s (implicit TLS) and imap/pop3 (STARTTLS/STLS), engine on."""
    cert, key, ca_path = cert_files
    config = relay_config(dovecot, allow_plaintext_auth=True, tls="starttls",
                          certificates=[{"cert": cert, "key": key}])
    for protocol in ("imap", "pop3"):
        config["listeners"].append({**config["listeners"][0 if protocol == "imap" else 1],
                                    "name": protocol + "s", "tls": "implicit"})
    if upstream_tls != "none":
        config["upstreams"]["main"] = {
            "host": HOST, "ca_file": ca_path,
            "imap": {"port": dovecot.imaps_port, "tls": upstream_tls},
            "pop3": {"port": dovecot.pop3s_port, "tls": upstream_tls}}
    config["relay"] = {"engine": "epoll"}
    return proxy_factory(config)


def imaps(proxy, ca, user) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(HOST, proxy.port("imaps"), ssl_context=client_context(ca),
                             timeout=TIMEOUT)
    imap.login(*user)
    return imap


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return b"Subject: " + subject.encode() + b"\r\n\r\n" + body


def test_tls_sessions_run_in_the_engine(proxy_factory, dovecot, user, ca, cert_files):
    name, _ = user
    big = message("big", b"".join(b"%06d " % i + os.urandom(30).hex().encode() + b"\r\n"
                                  for i in range(40_000)))   # ~2.7 MB: many records and chunks
    dovecot.deliver(name, message("small"))
    dovecot.deliver(name, big)
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    implicit = imaps(proxy, ca, user)
    pop = poplib.POP3_SSL(HOST, proxy.port("pop3s"), context=client_context(ca), timeout=TIMEOUT)
    pop.user(name)
    pop.pass_(user[1])
    starttls = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=TIMEOUT)
    starttls.starttls(client_context(ca))
    starttls.login(*user)
    stls = poplib.POP3(HOST, proxy.port("pop3"), timeout=TIMEOUT)
    stls.stls(client_context(ca))
    stls.user(name)
    stls.pass_(user[1])
    assert wait_for(lambda: engine_sessions(proxy) == 4, "the four TLS sessions in the engine")
    for imap in (implicit, starttls):
        assert imap.select("INBOX") == ("OK", [b"2"])
        assert imap.noop()[0] == "OK"
        typ, data = imap.fetch("2", "(BODY.PEEK[])")
        assert typ == "OK" and sha(data[0][1]) == sha(big)
    for client in (pop, stls):
        assert client.stat() == (2, len(message("small")) + len(big))
        assert sha(b"\r\n".join(client.retr(2)[1]) + b"\r\n") == sha(big)
        assert client.capa()   # answered by the proxy, in order
    assert engine_sessions(proxy) == 4
    implicit.logout()
    starttls.logout()
    pop.quit()
    stls.quit()
    assert wait_for(lambda: engine_sessions(proxy) == 0, "every session out of the engine")
    assert "session_crash" not in proxy.logs()


def test_curl_over_tls_on_both_sides(proxy_factory, dovecot_factory, ca, cert_files):
    """Client TLS and upstream TLS in one engine session, with curl (imaps, pop3s)."""
    cert, key, ca_path = cert_files
    upstream = dovecot_factory(tls=(cert, key))
    user = upstream.add_user()
    big = message("big", b"".join(b"%06d " % i + os.urandom(30).hex().encode() + b"\r\n"
                                  for i in range(30_000)))
    upstream.deliver(user[0], big)
    proxy = tls_proxy(proxy_factory, upstream, cert_files, upstream_tls="implicit")
    held = imaps(proxy, ca, user)   # one session held while curl runs its own
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the TLS session in the engine")
    for url in (f"imaps://{HOST}:{proxy.port('imaps')}/INBOX;UID=1",
                f"pop3s://{HOST}:{proxy.port('pop3s')}/1"):
        result = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "60",
                                 "--cacert", ca_path, "--user", f"{user[0]}:{user[1]}", url],
                                capture_output=True, timeout=90)
        assert result.returncode == 0, result.stderr
        assert sha(result.stdout) == sha(big), url
    assert held.noop()[0] == "OK"
    held.logout()
    assert wait_for(lambda: engine_sessions(proxy) == 0, "every session out of the engine")


def test_slow_tls_reader_of_a_big_fetch_bounds_proxy_memory(proxy_factory, dovecot, user, ca,
                                                             cert_files):
    """Backpressure over TLS: while the client reads nothing, the engine stops reading the
    upstream (ciphertext waits in the kernel, not in the proxy); then every byte arrives."""
    size = 40 * 1024 * 1024
    body = (b"x" * 76 + b"\r\n") * (size // 78)
    dovecot.deliver(user[0], b"Subject: big\r\n\r\n" + body)
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    raw = socket.create_connection((HOST, proxy.port("imaps")), timeout=TIMEOUT)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock = client_context(ca).wrap_socket(raw, server_hostname="localhost")
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"a LOGIN %s %s\r\ns SELECT INBOX\r\n" % (user[0].encode(), user[1].encode()))
    while not file.readline().startswith(b"s OK"):
        pass
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
    before = rss_kb(proxy.pid)
    sock.sendall(b"f FETCH * BODY.PEEK[TEXT]\r\n")
    wait_for(lambda: _proxy_upstream_rx_queue(proxy.pid, dovecot.imap_port) > 0,
             "the proxy to stop reading the upstream")
    grown = rss_kb(proxy.pid) - before
    assert grown < 8 * 1024, f"proxy RSS grew {grown} KB for a {size // 1024} KB FETCH not read"
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
    file.close()
    sock.close()


class BioClient:
    """A TLS client over memory BIOs, so a test can send part of a record."""

    def __init__(self, port: int, ca):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(self.incoming, self.outgoing,
                                               server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())
        self.buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            try:
                self.buffer += self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def records(self, data: bytes) -> bytes:
        self.tls.write(data)
        return self.outgoing.read()


def test_tls_reset_mid_record_ends_that_session_only(proxy_factory, dovecot, user, ca,
                                                     cert_files):
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    other = imaps(proxy, ca, user)
    client = BioClient(proxy.port("imaps"), ca)
    assert client.line().startswith(b"* OK")
    client.sock.sendall(client.records(b"a LOGIN %s %s\r\n" % (user[0].encode(),
                                                               user[1].encode())))
    assert client.line().startswith(b"a OK")
    assert wait_for(lambda: engine_sessions(proxy) == 2, "both sessions in the engine")
    record = client.records(b"n NOOP\r\n" * 500)
    client.sock.sendall(record[:len(record) // 2])
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()   # an RST with half a record sent
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the reset session out of the engine")
    assert other.noop()[0] == "OK"
    other.logout()
    assert "session_crash" not in proxy.logs()


def test_renegotiation_refused_in_the_engine(proxy_factory, dovecot, user, cert_files):
    """A logged-in TLS 1.2 client asking to renegotiate gets the no_renegotiation alert from
    the engine's TLSEngine (OP_NO_RENEGOTIATION), its session ends, and the engine goes on."""
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    proc = subprocess.Popen(
        ["openssl", "s_client", "-tls1_2", "-connect", f"{HOST}:{proxy.port('imaps')}",
         "-CAfile", cert_files[2], "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc, b"mailproxy ready.")
        proc.stdin.write(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
        proc.stdin.flush()
        read_until(proc, b"a OK")
        assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
        proc.stdin.write(b"R\n")  # s_client's command letter: renegotiate
        proc.stdin.flush()
        read_until(proc, b"\x00never\x00")  # until s_client ends: the renegotiation failed
        assert proc.wait(timeout=TIMEOUT) != 0
        assert b"no renegotiation" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert wait_for(lambda: engine_sessions(proxy) == 0, "the session out of the engine")
    assert "session_crash" not in proxy.logs()


def test_drain_says_bye_over_tls_then_close_notify(proxy_factory, dovecot, user, ca, cert_files):
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    clients = []
    for _ in range(2):
        raw = socket.create_connection((HOST, proxy.port("imaps")), timeout=TIMEOUT)
        sock = client_context(ca).wrap_socket(raw, server_hostname="localhost",
                                              suppress_ragged_eofs=False)
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
        assert file.readline().startswith(b"a OK")
        clients.append((sock, file))
    idle_sock, idle_file = clients[0]
    idle_sock.sendall(b"s SELECT INBOX\r\n")
    while not idle_file.readline().startswith(b"s OK"):
        pass
    idle_sock.sendall(b"i IDLE\r\n")
    assert idle_file.readline().startswith(b"+ ")
    assert wait_for(lambda: engine_sessions(proxy) == 2, "both sessions in the engine")
    proxy.send_signal(signal.SIGTERM)
    for _, file in clients:
        assert file.readline() == b"* BYE Server shutting down.\r\n"
        assert file.readline() == b""   # a close_notify: without one, SSLEOFError is raised
    assert proxy.wait(timeout=20) == 0
    for sock, file in clients:
        file.close()
        sock.close()


def test_compress_over_tls_is_handed_back_with_the_tls_state(proxy_factory, dovecot_factory, ca,
                                                            cert_files):
    """RFC 4978 over TLS: the engine forwards COMPRESS and hands the session back with its
    TLSEngine as it is; the task path reads and writes the same TLS session, compressed."""
    from .test_compress_relay import ZLIB

    zlib_dovecot = dovecot_factory(extra_config=ZLIB)
    user = zlib_dovecot.add_user()
    proxy = tls_proxy(proxy_factory, zlib_dovecot, cert_files)
    raw = socket.create_connection((HOST, proxy.port("imaps")), timeout=TIMEOUT)
    sock = client_context(ca).wrap_socket(raw, server_hostname="localhost",
                                          suppress_ragged_eofs=False)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert file.readline().startswith(b"a OK")
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
    while True:
        chunk = sock.recv(65536)   # ends with a close_notify (else SSLEOFError)
        if not chunk:
            break
        plain += inflate.decompress(chunk)
    assert plain.startswith(b"* BYE") and b"l OK" in plain, plain
    file.close()
    sock.close()
    assert "session_crash" not in proxy.logs()
