"""An IMAP relay session run by the relay engine from its greeting (proxy/relay/engine_login.py),
against a real Dovecot with imaplib: the pre-login dialogue, the login and the relay in the
engine's thread; a failed login answered by trio from the engine's outcome (asked once); and the
hand-back points (STARTTLS, SASL prompts, a route the engine does not know yet), after which trio
goes on exactly as before. The proxy logs at DEBUG where each login went
(`event=relay_engine_login outcome=relay|decided|trio`)."""

from __future__ import annotations

import imaplib
import re
import socket
import urllib.request

import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

HOST = "127.0.0.1"


def outcomes(proxy) -> list[str]:
    return re.findall(r"event=relay_engine_login .*?outcome=(\w+)", proxy.logs())


def metric(proxy, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")


@pytest.fixture
def proxy(proxy_factory, dovecot):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["health_check_interval"] = "1h"
    return proxy_factory(config)


def learn_greeting(proxy, user) -> None:
    """The first login to an upstream is trio's: it learns the greeting the engine needs."""
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    imap.login(*user)
    imap.logout()
    wait_for(lambda: outcomes(proxy) == ["trio"], what="the first login on trio")


def test_a_session_from_greeting_to_logout_in_the_engine(proxy, dovecot, user):
    learn_greeting(proxy, user)
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    assert imap.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN")
    # held by the engine before any login (on trio it would not be counted there)
    assert metric(proxy, "mailproxy_relay_engine_sessions") == 1
    assert imap.noop()[0] == "OK"
    typ, data = imap.login(*user)
    assert typ == "OK" and data[0].startswith(b"[CAPABILITY IMAP4rev1")
    assert imap.select("INBOX") == ("OK", [b"1"])
    typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: one\r\n\r\n"
    assert imap.logout()[0] == "BYE"
    assert outcomes(proxy) == ["trio", "relay"]
    assert metric(proxy, "mailproxy_auth_attempts_total", protocol="imap", mechanism="LOGIN",
                  result="success") == 2
    assert metric(proxy, "mailproxy_commands_total", protocol="imap", command="LOGIN",
                  status="OK") == 2
    assert metric(proxy, "mailproxy_commands_total", protocol="imap", command="NOOP",
                  status="OK") == 1


def test_a_wrong_password_is_asked_once_and_answered_by_trio(proxy, user):
    learn_greeting(proxy, user)
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.login(user[0], "wrong")
    assert outcomes(proxy) == ["trio", "decided"]
    assert len(re.findall(r"event=auth .*result=failure", proxy.logs())) == 1
    assert metric(proxy, "mailproxy_auth_attempts_total", protocol="imap", mechanism="LOGIN",
                  result="failure") == 1
    assert imap.login(*user)[0] == "OK"   # the session goes on, on trio
    imap.logout()


def test_hand_backs_go_on_on_trio(proxy, user):
    learn_greeting(proxy, user)
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="STARTTLS not available"):
        imap._simple_command("STARTTLS")
    typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{user[0]}\0{user[1]}".encode())
    assert typ == "OK"   # (a continuation: trio's prompts)
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    assert outcomes(proxy) == ["trio"]   # (neither login was the engine's)


def test_login_timeout_in_the_engine(proxy_factory, dovecot):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["listeners"][0].setdefault("timeouts", {})["login"] = "1s"
    proxy = proxy_factory(config)
    with socket.create_connection((HOST, proxy.port("imap")), timeout=30) as sock:
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    assert got.endswith(b"\r\n* BYE Login timeout.\r\n") and got.startswith(b"* OK [CAPABILITY")
    wait_for(lambda: re.search(r"event=session_end .*reason=login_timeout", proxy.logs()),
             what="the session's end")


def test_engine_login_off_leaves_every_login_to_trio(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["relay"] = {"engine_login": False}
    proxy = proxy_factory(config)
    for _ in range(2):   # (the second would be the engine's)
        imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
        assert metric(proxy, "mailproxy_relay_engine_sessions") == 0   # greeted by trio
        assert imap.login(*user)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()   # (answered by the relay: the session ends once Dovecot has closed too)
        wait_for(lambda: metric(proxy, "mailproxy_relay_engine_sessions") == 0,
                 what="the session out of the engine")
    assert outcomes(proxy) == []
