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

import pytest
import trustme

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_relay_engine import compress_handed_back, deliver_big, engine_sessions, unread_fetch_bounds_memory
from .test_tls import client_context, renegotiation_refused, write_pair

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


def imaps_login(proxy, ca, user, rcvbuf: int = 0) -> tuple[ssl.SSLSocket, object]:
    """A raw implicit-TLS session logged in as `user` (a close_notify expected at its end):
    the socket and its reader. `rcvbuf`: the receive buffer set before the handshake."""
    raw = socket.create_connection((HOST, proxy.port("imaps")), timeout=TIMEOUT)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock = client_context(ca).wrap_socket(raw, server_hostname="localhost",
                                          suppress_ragged_eofs=False)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert file.readline().startswith(b"a OK")
    return sock, file


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
    """Backpressure over TLS (unread_fetch_bounds_memory): ciphertext waits in the kernel."""
    body = deliver_big(dovecot, user)
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    sock, file = imaps_login(proxy, ca, user, rcvbuf=64 * 1024)
    sock.sendall(b"s SELECT INBOX\r\n")
    while not file.readline().startswith(b"s OK"):
        pass
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
    unread_fetch_bounds_memory(proxy, dovecot, sock, file, body)
    file.close()
    sock.close()


class BioClient:
    """A TLS client over memory BIOs, so a test can send part of a record."""

    def __init__(self, port: int, ca, *, handshake: bool = True):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(self.incoming, self.outgoing,
                                               server_hostname="localhost")
        self.buffer = b""
        if handshake:
            self.handshake_then(b"")

    def handshake_then(self, data: bytes) -> None:
        """The handshake, with `data`'s record (if any) in the same write as the client's
        Finished."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        if data:
            self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

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
    renegotiation_refused(
        proxy.port("imaps"), cert_files[2],
        b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()), b"a OK",
        lambda: wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine"))
    assert wait_for(lambda: engine_sessions(proxy) == 0, "the session out of the engine")
    assert "session_crash" not in proxy.logs()


def test_drain_says_bye_over_tls_then_close_notify(proxy_factory, dovecot, user, ca, cert_files):
    proxy = tls_proxy(proxy_factory, dovecot, cert_files)
    clients = [imaps_login(proxy, ca, user) for _ in range(2)]
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
    TLSEngine as it is; the task path reads and writes the same TLS session, compressed, and
    ends it with a close_notify (without one, the client's recv raises SSLEOFError)."""
    from .test_compress_relay import ZLIB

    zlib_dovecot = dovecot_factory(extra_config=ZLIB)
    user = zlib_dovecot.add_user()
    proxy = tls_proxy(proxy_factory, zlib_dovecot, cert_files)
    compress_handed_back(proxy, *imaps_login(proxy, ca, user))
    assert "session_crash" not in proxy.logs()
