"""Failed-login throttling is the same on gateway listeners as on relay listeners: both log in
through proxy.session.login, so wrong passwords are delayed, then the user is refused
(NO [UNAVAILABLE], auth result "throttled") even with the right password, while other users are
not affected. Real proxy process, real Dovecot (its POP3 decides gateway logins)."""

from __future__ import annotations

import imaplib
import socket
import urllib.request

import pytest

from support.proxyproc import relay_config

HOST = "127.0.0.1"


def attempts(proxy, result: str) -> float:
    """mailproxy_auth_attempts_total{protocol="imap",mechanism="LOGIN",result=...}."""
    body = urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics", timeout=10).read()
    wanted = f'mailproxy_auth_attempts_total{{mechanism="LOGIN",protocol="imap",result="{result}"}}'
    for line in body.decode().splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in /metrics")


def login(port: int, name: str, password: str) -> str:
    """"OK", or the text of the NO."""
    imap = imaplib.IMAP4(HOST, port, timeout=30)
    try:
        return imap.login(name, password)[0]
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        imap.shutdown()


def raw_login(port: int, name: str, password: str, source: str) -> bytes:
    """LOGIN from the `source` address; the tagged reply line."""
    with socket.create_connection((HOST, port), timeout=30, source_address=(source, 0)) as sock:
        reply = b""
        sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (name.encode(), password.encode()))
        while b"\r\na " not in b"\r\n" + reply:
            data = sock.recv(65536)
            assert data, reply
            reply += data
        return (b"\r\n" + reply).split(b"\r\na ", 1)[1].split(b"\r\n", 1)[0].join(
            (b"a ", b""))


@pytest.mark.parametrize("mode", ["relay", "gateway"])
def test_wrong_passwords_are_throttled_alike(mode, proxy_factory, dovecot, tmp_path):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["listeners"][0]["mode"] = mode
    if mode == "gateway":
        config["gateway"] = {"store": str(tmp_path / "gateway.db")}
    config["auth_throttle"] = {"base_delay": "10ms", "max_delay": "50ms", "block_after": 3,
                               "block_for": "1h"}
    proxy = proxy_factory(config)
    port = proxy.port("imap")
    name, password = dovecot.add_user()
    for _ in range(3):
        assert "[AUTHENTICATIONFAILED] Authentication failed." in login(port, name, "wrong")
    assert attempts(proxy, "failure") == 3
    # Blocked now: the right password is refused too, without asking the upstream.
    refused = login(port, name, password)
    assert "[UNAVAILABLE] Too many authentication failures, try again later." in refused
    assert attempts(proxy, "throttled") == 1
    assert attempts(proxy, "success") == 0
    other, other_password = dovecot.add_user()  # another user from another IP: unaffected
    assert raw_login(port, other, other_password, "127.0.0.5").startswith(b"a OK")
    assert attempts(proxy, "success") == 1
    assert "result=throttled" in proxy.logs()
