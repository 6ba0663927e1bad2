"""The relay engine's thread accepting on an implicit-TLS IMAP listener (relay.engine_accept,
proxy/relay/engine_accept.py) and doing the handshake itself (engine_tls_accept.py), against a
real Dovecot with imaplib.IMAP4_SSL and raw TLS sockets: sessions accepted, handshaken, logged in,
relayed and ended in the engine (mailproxy_relay_engine_accepted_total, tls_handshakes, the
session_end line); a command sent with the handshake's end; handshake failures (garbage, a
client that stalls: the login timeout, an ALPN offer of another protocol) counted with trio's
reasons; the per-IP limit; a drain and a certificate reload while the engine accepts; an admin
kick (the BYE encrypted, then our close_notify)."""

from __future__ import annotations

import imaplib
import re
import signal
import socket
import ssl

import pytest
import trustme
import yaml

from support.polling import wait_for
from support.proxyproc import relay_config

from . import test_relay_engine_tls
from .test_operations import read_until
from .test_relay_engine_login import metric, outcomes
from .test_tls import client_context, write_pair

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_config(dovecot, ca, tmp_path, **listener) -> dict:
    cert, key = write_pair(ca.issue_cert("localhost", "127.0.0.1"), tmp_path, "proxy")
    config = relay_config(dovecot, listeners=("imap",), tls="implicit",
                          certificates=[{"cert": cert, "key": key}], **listener)
    config["upstreams"]["main"]["health_check_interval"] = "1h"
    return config


def accepted(proxy) -> float:
    return metric(proxy, "mailproxy_relay_engine_accepted_total", listener="imap")


def handshakes(proxy, result: str) -> float:
    return metric(proxy, "mailproxy_tls_handshakes_total", listener="imap", result=result)


def active(proxy) -> float:
    return metric(proxy, "mailproxy_connections_active", listener="imap")


def ends(proxy) -> list[str]:
    return re.findall(r"event=session_end .*", proxy.logs())


def imaps(proxy, ca) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(HOST, proxy.port("imap"), ssl_context=client_context(ca), timeout=30)


def tls_socket(proxy, ca) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    return client_context(ca).wrap_socket(raw, server_hostname="localhost")


class BioClient(test_relay_engine_tls.BioClient):
    """A TLS client on memory BIOs, so that its writes leave exactly as the test groups them;
    the handshake is the test's (`handshake_then`)."""

    def __init__(self, proxy, ca):
        super().__init__(proxy.port("imap"), ca, handshake=False)

    def read_until(self, marker: bytes) -> bytes:
        """Plaintext until `marker`, or the server's close_notify."""
        received = b""
        while marker not in received:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                raw = self.sock.recv(65536)
                if not raw:
                    break
                self.incoming.write(raw)
                continue
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                return received + b"<close_notify>"
            received += chunk
        return received


def test_tls_sessions_accepted_handshaken_and_run_by_the_engine(proxy_factory, dovecot, user, ca,
                                                                tmp_path):
    proxy = proxy_factory(tls_config(dovecot, ca, tmp_path))
    with imaps(proxy, ca) as imap:   # (its login is trio's: the greeting is learnt)
        assert imap.login(*user)[0] == "OK"
        imap.logout()
    wait_for(lambda: outcomes(proxy) == ["trio"], what="the first login on trio")
    for _ in range(2):
        with imaps(proxy, ca) as imap:
            assert imap.login(*user)[0] == "OK"
            assert imap.select("INBOX")[0] == "OK"
            assert imap.noop()[0] == "OK"
            imap.logout()
    # LOGIN in the same TCP segment as the client's Finished: read with the handshake's end
    client = BioClient(proxy, ca)
    client.handshake_then(b"a LOGIN %s %s\r\nb LOGOUT\r\n" % (user[0].encode(),
                                                                user[1].encode()))
    received = client.read_until(b"b OK")
    assert received.startswith(b"* OK [CAPABILITY") and b"\r\na OK [CAPABILITY" in received
    assert b"\r\n* BYE " in received
    assert client.read_until(b"never") == b"<close_notify>"   # a clean end of the TLS session
    client.sock.close()
    wait_for(lambda: len(ends(proxy)) == 4, what="four session_end lines")
    assert accepted(proxy) == 4
    assert handshakes(proxy, "ok") == 4
    assert outcomes(proxy) == ["trio", "relay", "relay", "relay"]
    assert all("tls=True" in line for line in ends(proxy))
    wait_for(lambda: active(proxy) == 0, what="no active connection")
    assert metric(proxy, "mailproxy_relay_engine_sessions") == 0
    assert not proxy.tracebacks()


def test_handshake_failures_in_the_engine(proxy_factory, dovecot, ca, tmp_path):
    config = tls_config(dovecot, ca, tmp_path)
    # the stalled client's bound, which the other two must fail well within, loaded or not (at
    # 1 s a loaded machine could time them out too); it runs while they do
    config["listeners"][0]["timeouts"] = {"login": "5s"}
    proxy = proxy_factory(config)
    stalled = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    stalled.sendall(b"\x16\x03\x01\x02\x00\x01")   # a ClientHello's first bytes, no more
    garbage = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = read_until(garbage, b"never")
    assert b"OK" not in answer and len(answer) < 64   # an alert at most, then the end
    raw = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    try:   # ALPACA: an offer of other protocols only never gets a greeting
        wrong = client_context(ca, alpn=["http/1.1"]).wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, ConnectionError):
        pass   # (the server may abort before the client's handshake completes)
    else:
        try:
            assert wrong.recv(4096) == b""
        except (ssl.SSLError, ConnectionError):
            pass
        wrong.close()
    assert read_until(stalled, b"never") == b""    # closed at the login timeout
    wait_for(lambda: len(ends(proxy)) == 3, what="three session_end lines")
    assert accepted(proxy) == 3
    assert [handshakes(proxy, r) for r in ("ok", "handshake_failed", "timeout", "alpn_refused")] \
        == [0, 1, 1, 1]
    assert sorted(re.search(r"reason=(\w+)", line).group(1) for line in ends(proxy)) == \
        ["tls_alpn_refused", "tls_handshake_failed", "tls_timeout"]   # (ends after a linger)
    wait_for(lambda: active(proxy) == 0, what="no active connection")
    assert metric(proxy, "mailproxy_relay_engine_sessions") == 0
    assert not proxy.tracebacks()
    garbage.close()
    stalled.close()


def test_the_per_ip_limit_at_the_engines_tls_accept(proxy_factory, dovecot, user, ca, tmp_path):
    proxy = proxy_factory(tls_config(dovecot, ca, tmp_path, max_connections_per_ip=2))
    first, second = imaps(proxy, ca), imaps(proxy, ca)
    with pytest.raises((ssl.SSLError, OSError)):   # refused before its handshake: no words
        imaps(proxy, ca)
    wait_for(lambda: metric(proxy, "mailproxy_limit_hits_total",
                            limit="max_connections_per_ip") == 1, what="the refusal counted")
    first.logout()
    wait_for(lambda: active(proxy) == 1, what="the first session's end")
    with imaps(proxy, ca) as again:   # its slot came back
        assert again.login(*user)[0] == "OK"
        again.logout()
    second.logout()
    assert accepted(proxy) == 3   # (the refused one is not)
    assert not proxy.tracebacks()


def test_drain_and_reload_while_the_engine_accepts_tls(proxy_factory, dovecot, user, ca,
                                                       tmp_path):
    proxy = proxy_factory(tls_config(dovecot, ca, tmp_path))
    with imaps(proxy, ca) as imap:
        imap.login(*user)
        imap.logout()
    # a reload with another certificate: the next handshake in the engine uses it
    other = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = write_pair(other, tmp_path / "new", "proxy")
    config = yaml.safe_load(proxy.config_path.read_text())
    config["listeners"][0]["certificates"] = [{"cert": cert, "key": key}]
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in proxy.logs(), what="event=reloaded")
    relayed = tls_socket(proxy, ca)
    served = ssl.DER_cert_to_PEM_cert(relayed.getpeercert(binary_form=True)).encode()
    assert served == other.cert_chain_pems[0].bytes()
    assert read_until(relayed, b"\r\n").startswith(b"* OK [CAPABILITY")
    relayed.sendall(b"a LOGIN %s %s\r\ns SELECT INBOX\r\n" % (user[0].encode(), user[1].encode()))
    read_until(relayed, b"s OK")
    handshaking = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    wait_for(lambda: active(proxy) == 2, what="the handshaking client's accept")
    assert accepted(proxy) == 3
    proxy.send_signal(signal.SIGTERM)
    assert read_until(relayed, b"shutting down.\r\n").endswith(b"* BYE Server shutting down.\r\n")
    assert read_until(handshaking, b"never") == b""
    assert proxy.wait(timeout=30) == 0
    assert sorted(re.findall(r"event=session_end .*reason=(\w+)", proxy.logs())[-2:]) == \
        ["shutdown", "shutdown"]
    relayed.close()
    handshaking.close()


def test_admin_kick_of_a_tls_session_in_the_engine(proxy_factory, dovecot, user, ca, tmp_path):
    from support.dovecot import free_ports

    from .test_admin import verb

    (tmp_path / "admin.token").write_text("s3cret-token\n")
    (port,) = free_ports(1)
    config = tls_config(dovecot, ca, tmp_path)
    config["admin"] = {"address": f"127.0.0.1:{port}",
                       "token": {"file": str(tmp_path / "admin.token")}}
    proxy = proxy_factory(config)
    with imaps(proxy, ca) as imap:   # (trio's login: the greeting is learnt)
        imap.login(*user)
        imap.logout()
    client = BioClient(proxy, ca)
    client.handshake_then(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert b"a OK" in client.read_until(b"a OK")
    wait_for(lambda: outcomes(proxy) == ["trio", "relay"], what="the engine's login line")
    kicked = verb(proxy, "kick", user[0])
    assert (kicked.returncode, kicked.stdout) == (0, f"kicked 1 session(s) of user {user[0]}\n")
    # the BYE encrypted, then our close_notify
    assert client.read_until(b"never") == \
        b"* BYE Disconnected by the administrator.\r\n<close_notify>"
    wait_for(lambda: re.search(r"event=session_end .*reason=kicked", proxy.logs()),
             what="the kicked session's end")
    assert accepted(proxy) == 2
    client.sock.close()
    assert not proxy.tracebacks()
