"""An early login (written before the greeting, built for the capabilities an earlier greeting
announced) refused on a connection whose greeting announced no capabilities: the proxy asks
CAPABILITY in that connection, finds the login was built for what the upstream offers, and
answers the refusal; the upstream is asked once, never logged in again from scratch. The same in
the relay engine's login (relay/engine_login.py, its outcome handed to trio as decided) and in
trio's (`relay.engine_login: false`; there the early verdict used to be passed over while
CAPABILITY was asked, and the login then waited for it until its timeout). The decision itself
is unit-tested byte by byte in tests/unit/test_imap_login_machine.py."""

from __future__ import annotations

import re
import socket

import pytest

from support.proxyproc import relay_config

from . import fake_upstream

HOST = "127.0.0.1"
CAPS = b"IMAP4rev1 AUTH=PLAIN SASL-IR ID"
EARLY = b"P1 AUTHENTICATE PLAIN AHVzZXJAZXhhbXBsZS5jb20Ad3Jvbmc=\r\n"


def _upstream() -> fake_upstream.FakeUpstream:
    """Connections 1 (the health check) and 2 (the first session, which learns the greeting)
    greet with CAPS; later ones read the early login, greet without capabilities, refuse it,
    answer CAPABILITY with CAPS, and accept any further login (which must not come)."""
    count = [0]

    def script(conn: fake_upstream.FakeConn) -> None:
        count[0] += 1
        if count[0] <= 2:
            conn.send(b"* OK [CAPABILITY " + CAPS + b"] fake ready\r\n")
            line = conn.readline()
            if not line:   # the health check
                return
            conn.send(line.split(b" ", 1)[0] + b" NO [AUTHENTICATIONFAILED] no\r\n")
            conn.rest()
            return
        line = conn.readline()   # before the greeting
        conn.send(b"* OK fake ready\r\n")
        conn.send(line.split(b" ", 1)[0] + b" NO [AUTHENTICATIONFAILED] no\r\n")
        while line := conn.readline():
            tag = line.split(b" ", 1)[0]
            if line == tag + b" CAPABILITY\r\n":
                conn.send(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
            else:
                conn.send(tag + b" OK [CAPABILITY IMAP4rev1] in\r\n")

    return fake_upstream.FakeUpstream(script)


def _log_in(proxy) -> bytes:
    with socket.create_connection((HOST, proxy.port("imap")), timeout=30) as sock:
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(b'a LOGIN "user@example.com" "wrong"\r\n')
        reply = file.readline()
        file.close()
    return reply


@pytest.mark.parametrize("engine_login", [True, False])
def test_a_refused_early_login_is_asked_once(proxy_factory, dovecot, engine_login):
    fake = _upstream()
    try:
        config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["imap"] = {"port": fake.port, "tls": "none"}
        config["upstreams"]["main"]["health_check_interval"] = "1h"
        config["upstreams"]["main"]["forward_client_ip"] = False
        config["auth_throttle"] = {"enabled": False}   # (the engine logs in clean clients only)
        config["relay"] = {"engine_login": engine_login}
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""   # the health check
        refused = b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        assert _log_in(proxy) == refused       # the greeting learnt
        assert fake.wait_connection() == EARLY
        assert _log_in(proxy) == refused
        assert fake.wait_connection() == EARLY + b"P2 CAPABILITY\r\n"
        assert len(fake.received) == 3 and fake.connections.acquire(timeout=0) is False
        found = re.findall(r"event=relay_engine_login .*?outcome=(\w+)", proxy.logs())
        assert found == (["trio", "decided"] if engine_login else [])
    finally:
        fake.close()
