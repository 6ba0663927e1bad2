"""The relay engine's thread accepting on a plain IMAP listener itself (relay.engine_accept,
proxy/relay/engine_accept.py), against a real Dovecot with imaplib and raw sockets: sessions
accepted, run and ended with no trio task (the accept counter, the session_end line with exact
byte counts, gauges back to zero); the listener's limits at the engine's accept (refusal, another
IP, release at the engine's end); a drain and reloads while the engine accepts; an admin kick of
a session in the engine; and the hand-offs to trio after an engine accept (STARTTLS, SASL
prompts, a refused login), after which trio goes on exactly as before."""

from __future__ import annotations

import imaplib
import re
import signal
import socket

import pytest
import trustme
import yaml

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_admin import verb
from .test_operations import login_raw, read_until, refuse_and_release
from .test_relay_engine_login import learn_greeting, metric, outcomes
from .test_tls import client_context, write_pair

HOST = "127.0.0.1"


def accepted(proxy) -> float:
    return metric(proxy, "mailproxy_relay_engine_accepted_total", listener="imap")


def ends(proxy) -> list[str]:
    return re.findall(r"event=session_end .*", proxy.logs())


def active(proxy) -> float:
    return metric(proxy, "mailproxy_connections_active", listener="imap")


@pytest.fixture
def proxy(proxy_factory, dovecot):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["health_check_interval"] = "1h"
    return proxy_factory(config)


def drain_both(proxy, waiting, relayed) -> None:
    """SIGTERM: a session waiting before its login and a relayed one both get the drain's BYE
    and the close; the process exits 0, both sessions ended `shutdown`."""
    proxy.send_signal(signal.SIGTERM)
    assert read_until(waiting, b"shutting down.\r\n") == b"* BYE Server shutting down.\r\n"
    assert read_until(relayed, b"shutting down.\r\n").endswith(b"* BYE Server shutting down.\r\n")
    assert waiting.recv(4096) == b"" and relayed.recv(4096) == b""
    assert proxy.wait(timeout=30) == 0
    assert re.findall(r"event=session_end .*reason=(\w+)", proxy.logs())[-2:] == \
        ["shutdown", "shutdown"]


def test_sessions_accepted_run_and_ended_by_the_engine(proxy, user):
    learn_greeting(proxy, user)   # (accepted by the engine, its login handed to trio)
    for _ in range(3):
        imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
        assert imap.login(*user)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        assert imap.logout()[0] == "BYE"
    # a client that keeps its end open after LOGOUT: the engine half-closes and lingers
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    received = read_until(sock, b"\r\n")
    sent = b"a LOGIN %s %s\r\nb LOGOUT\r\n" % (user[0].encode(), user[1].encode())
    sock.sendall(sent)
    while chunk := sock.recv(4096):   # the proxy's FIN comes while we still hold our end
        received += chunk
    assert b"\r\na OK [CAPABILITY" in received and b"\r\n* BYE " in received
    assert received.endswith(b"\r\n") and b"\r\nb OK " in received
    sock.close()
    wait_for(lambda: len(ends(proxy)) == 5, what="five session_end lines")
    assert accepted(proxy) == 5
    assert outcomes(proxy) == ["trio", "relay", "relay", "relay", "relay"]
    # imaplib closes once it has LOGOUT's OK, racing Dovecot's own close: the relay names
    # whichever EOF it read first (imap_core); the lingering client cannot close first
    assert {re.search(r"reason=(\w+)", line).group(1) for line in ends(proxy)[:-1]} <= \
        {"client_logout", "client_closed"}, ends(proxy)
    assert "reason=client_logout" in ends(proxy)[-1]
    assert f"bytes_in={len(sent)} bytes_out={len(received)} " in ends(proxy)[-1]
    assert metric(proxy, "mailproxy_connections_total", listener="imap") == 5
    wait_for(lambda: active(proxy) == 0, what="no active connection")
    assert metric(proxy, "mailproxy_relay_engine_sessions") == 0
    assert not proxy.tracebacks()


def test_limits_at_the_engines_accept(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True,
                          max_connections=3, max_connections_per_ip=2)
    proxy = proxy_factory(config)
    learn_greeting(proxy, user)
    refuse_and_release(proxy, user)
    assert outcomes(proxy) == ["trio", "relay", "relay", "relay", "relay"]   # (in the engine)
    assert accepted(proxy) == 5   # (the refused are not)


def test_drain_while_the_engine_accepts(proxy, user):
    learn_greeting(proxy, user)
    waiting = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    assert read_until(waiting, b"\r\n").startswith(b"* OK [CAPABILITY")   # greeted, no login
    relayed = login_raw(proxy.port("imap"), user)
    relayed.sendall(b"s SELECT INBOX\r\n")
    read_until(relayed, b"s OK")
    assert outcomes(proxy) == ["trio", "relay"]
    drain_both(proxy, waiting, relayed)
    with pytest.raises(OSError):   # (stopped accepting)
        socket.create_connection((HOST, proxy.port("imap")), timeout=5)


def test_reload_while_the_engine_accepts(proxy, user):
    learn_greeting(proxy, user)
    held = login_raw(proxy.port("imap"), user)
    config = yaml.safe_load(proxy.config_path.read_text())
    config["listeners"][0]["max_connections_per_ip"] = 1
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in proxy.logs(), what="event=reloaded")
    refused = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    assert read_until(refused, b"\r\n").startswith(b"* BYE [UNAVAILABLE]")   # the new limit
    held.sendall(b"h NOOP\r\n")
    assert b"h OK" in read_until(held, b"h ")   # the open session goes on
    held.close()
    wait_for(lambda: active(proxy) == 0, what="the held session's end")
    count = accepted(proxy)
    config["relay"] = {"engine_accept": False}
    del config["listeners"][0]["max_connections_per_ip"]   # (imaplib's next connect races the end)
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: proxy.logs().count("event=reloaded") == 2, what="the second reload")
    for _ in range(2):   # trio's accept loop takes over (the engine still logs them in)
        imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
        assert imap.login(*user)[0] == "OK"
        imap.logout()
    assert accepted(proxy) == count
    assert outcomes(proxy)[-2:] == ["trio", "relay"]   # (a reload forgets the greeting)


def test_admin_kick_of_a_session_in_the_engine(proxy_factory, dovecot, user, tmp_path):
    from support.dovecot import free_ports

    (tmp_path / "admin.token").write_text("s3cret-token\n")
    (port,) = free_ports(1)
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["admin"] = {"address": f"127.0.0.1:{port}",
                       "token": {"file": str(tmp_path / "admin.token")}}
    proxy = proxy_factory(config)
    learn_greeting(proxy, user)
    sock = login_raw(proxy.port("imap"), user)
    # (the engine logs where the login went after it forwarded the OK: wait for the line)
    wait_for(lambda: outcomes(proxy) == ["trio", "relay"], what="the engine's login line")
    kicked = verb(proxy, "kick", user[0])
    assert (kicked.returncode, kicked.stdout) == (0, f"kicked 1 session(s) of user {user[0]}\n")
    assert read_until(sock, b"administrator.\r\n") == b"* BYE Disconnected by the administrator.\r\n"
    assert sock.recv(4096) == b""
    wait_for(lambda: re.search(r"event=session_end .*reason=kicked", proxy.logs()),
             what="the kicked session's end")
    assert verb(proxy, "who").stdout.splitlines()[1:] == []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_hand_offs_to_trio_after_an_engine_accept(proxy_factory, dovecot, user, ca, tmp_path):
    cert, key = write_pair(ca.issue_cert("localhost", "127.0.0.1"), tmp_path, "proxy")
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True,
                          tls="starttls", certificates=[{"cert": cert, "key": key}])
    proxy = proxy_factory(config)
    learn_greeting(proxy, user)
    with imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30) as imap:   # STARTTLS: trio's
        imap.starttls(client_context(ca))
        assert imap.login(*user)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
    with imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30) as imap:   # SASL prompts: trio's
        typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{user[0]}\0{user[1]}".encode())
        assert typ == "OK"
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
    with imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30) as imap:   # refused: trio answers
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(user[0], "wrong")
        assert imap.login(*user)[0] == "OK"
        imap.logout()
    wait_for(lambda: len(ends(proxy)) == 4, what="four session_end lines")
    assert accepted(proxy) == 4
    assert outcomes(proxy) == ["trio", "decided"]
    assert {re.search(r"reason=(\w+)", line).group(1) for line in ends(proxy)} <= \
        {"client_logout", "client_closed"}   # (imaplib's close races Dovecot's, as above)
    assert "tls=True" not in ends(proxy)[0] and "tls=True" in ends(proxy)[1]
    wait_for(lambda: active(proxy) == 0, what="no active connection")
    assert not proxy.tracebacks()
