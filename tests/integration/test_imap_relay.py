"""The IMAP relay against a real Dovecot, driven by real clients (imaplib, imapclient)."""

from __future__ import annotations

import hashlib
import imaplib
import os
import select
import socket

import imapclient
import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

HOST = "127.0.0.1"


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + os.urandom(6).hex().encode() + b"@example.com>\r\n\r\n" + body)


def connect(proxy) -> imaplib.IMAP4:
    return imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)


def test_login_select_fetch_store_search_logout(relay_proxy, dovecot, user):
    name, password = user
    dovecot.deliver(name, message("first"))
    dovecot.deliver(name, message("second"))
    imap = connect(relay_proxy)
    assert b"IMAP4rev1" in imap.welcome
    typ, data = imap.login(name, password)
    assert typ == "OK"
    assert b"[CAPABILITY IMAP4rev1" in data[0]  # the upstream's, in the LOGIN reply
    caps = imap.capability()[1][0].split()
    assert b"IDLE" in caps and b"STARTTLS" not in caps
    assert not any(c.startswith(b"AUTH=") for c in caps)
    typ, data = imap.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])
    typ, data = imap.fetch("1:2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [part[1] for part in data if isinstance(part, tuple)]
    assert subjects == [b"Subject: first\r\n\r\n", b"Subject: second\r\n\r\n"]
    typ, data = imap.store("2", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0]
    assert imap.search(None, "FLAGGED") == ("OK", [b"2"])
    assert imap.search(None, 'SUBJECT "first"') == ("OK", [b"1"])
    typ, data = imap.logout()
    assert typ == "BYE"


def test_authenticate_plain_and_wrong_password(relay_proxy, user):
    name, password = user
    imap = connect(relay_proxy)
    typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{name}\0{password}".encode())
    assert typ == "OK"
    imap.logout()
    imap = connect(relay_proxy)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        imap.login(name, password + "x")
    imap.shutdown()


def test_login_with_literal_arguments(relay_proxy, user):
    """A password with a double quote and a backslash, sent as synchronizing literals."""
    name, _ = user
    sock = socket.create_connection((HOST, relay_proxy.port("imap")), timeout=10)
    file = sock.makefile("rb")
    assert file.readline().startswith(b"* OK [CAPABILITY IMAP4rev1")
    sock.sendall(b"a LOGIN {%d}\r\n" % len(name))
    assert file.readline().startswith(b"+ ")
    sock.sendall(name.encode() + b" {3}\r\n")
    assert file.readline().startswith(b"+ ")
    sock.sendall(b'x"\\\r\n')
    assert file.readline().startswith(b"a NO [AUTHENTICATIONFAILED]")
    sock.close()


def test_append_20mb_literal_is_byte_identical(relay_proxy, dovecot, user):
    name, password = user
    body = b"".join(b"line %07d " % i + os.urandom(24).hex().encode() + b"\r\n"
                    for i in range(20 * 1024 * 1024 // 60))
    msg = message("big", body)
    assert len(msg) > 20_000_000
    imap = connect(relay_proxy)
    imap.login(name, password)
    typ, data = imap.append("INBOX", None, None, msg)
    assert typ == "OK"
    imap.logout()
    direct = imaplib.IMAP4(HOST, dovecot.imap_port)
    direct.login(name, password)
    direct.select("INBOX", readonly=True)
    typ, data = direct.fetch("1", "(BODY.PEEK[])")
    assert hashlib.sha256(data[0][1]).hexdigest() == hashlib.sha256(msg).hexdigest()
    direct.logout()


def test_pipelined_commands_in_one_write(relay_proxy, dovecot, user):
    name, password = user
    dovecot.deliver(name, message("p"))
    sock = socket.create_connection((HOST, relay_proxy.port("imap")), timeout=10)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"a LOGIN %s %s\r\nb SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\nd NOOP\r\ne LOGOUT\r\n"
                 % (name.encode(), password.encode()))
    lines = file.read().split(b"\r\n")
    tagged = [line.split(b" ", 2)[:2] for line in lines if line[:1] in b"abcde" and line]
    assert tagged == [[b"a", b"OK"], [b"b", b"OK"], [b"c", b"OK"], [b"d", b"OK"], [b"e", b"OK"]]
    assert any(line.startswith(b"* 1 FETCH (FLAGS") for line in lines)
    sock.close()


def test_idle_sees_append_from_another_session(relay_proxy, user):
    name, password = user
    watcher = imapclient.IMAPClient(HOST, port=relay_proxy.port("imap"), ssl=False, timeout=30)
    watcher.login(name, password)
    watcher.select_folder("INBOX")
    watcher.idle()
    other = imapclient.IMAPClient(HOST, port=relay_proxy.port("imap"), ssl=False, timeout=30)
    other.login(name, password)
    other.append("INBOX", message("pushed"))
    responses = watcher.idle_check(timeout=30)   # returns at the first response
    watcher.idle_done()
    assert (1, b"EXISTS") in responses
    other.logout()
    watcher.logout()


def test_upstream_down_gives_unavailable(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    sock = socket.socket()
    sock.bind((HOST, 0))
    dead_port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    config["upstreams"]["main"]["imap"]["port"] = dead_port
    proxy = proxy_factory(config)
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        imap.login(*user)
    imap.shutdown()
    assert "event=upstream_error" in proxy.logs() and "reason=connect" in proxy.logs()


def test_two_routes_reach_two_dovecots(proxy_factory, dovecot, dovecot_factory):
    second = dovecot_factory()
    first_user = dovecot.add_user()
    second_user = second.add_user(name="someone@other.example")
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["upstreams"]["second"] = {"host": HOST, "imap": {"port": second.imap_port}}
    config["routes"] = [{"match": "*@other.example", "upstream": "second"},
                        {"match": "*", "upstream": "main"}]
    proxy = proxy_factory(config)
    for (name, password), instance in ((first_user, dovecot), (second_user, second)):
        imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=10)
        assert imap.login(name, password)[0] == "OK"
        imap.logout()
        # Dovecot's log process writes the Login line on its own time: wait for it, bounded
        wait_for(lambda name=name, instance=instance: f"user=<{name}>" in instance.log(),
                 f"{name}'s login in its Dovecot")


def test_forward_client_ip_reaches_dovecot_log(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["forward_client_ip"] = True
    proxy = proxy_factory(config)
    sock = socket.socket()
    sock.bind(("127.0.0.9", 0))  # any loopback address: the proxy sees this one
    sock.connect((HOST, proxy.port("imap")))
    file = sock.makefile("rb")
    file.readline()
    name, password = user
    sock.sendall(b"a LOGIN %s %s\r\nb LOGOUT\r\n" % (name.encode(), password.encode()))
    assert b"a OK" in file.read()
    wait_for(lambda: f"user=<{name}>, rip=127.0.0.9" in dovecot.log(),
             "Dovecot's login line with the client's address")


def test_preauth_commands_answered_locally(relay_proxy):
    sock = socket.create_connection((HOST, relay_proxy.port("imap")), timeout=10)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"a CAPABILITY\r\nb NOOP\r\nc ID NIL\r\nd STARTTLS\r\ne SELECT INBOX\r\n"
                 b"f LOGOUT\r\n")
    reply = file.read()
    assert b"* CAPABILITY IMAP4rev1" in reply and b"a OK" in reply and b"b OK" in reply
    assert b'* ID ("name" "mailproxy")' in reply and b"c OK" in reply
    assert b"d BAD" in reply and b"e BAD" in reply
    assert reply.endswith(b"* BYE Logging out.\r\nf OK Logout completed.\r\n")
    sock.close()


def test_login_fallback_with_literal_password(proxy_factory, dovecot):
    """An upstream without AUTH=PLAIN/SASL-IR and LITERAL+ gets LOGIN with a synchronizing
    literal for a password holding a quote and 8-bit bytes."""
    from . import fake_upstream

    fake = fake_upstream.FakeUpstream(fake_upstream.imap_login_literals)
    try:
        config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["imap"] = {"port": fake.port, "tls": "none"}
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""  # the health check
        sock = socket.create_connection((HOST, proxy.port("imap")), timeout=10)
        file = sock.makefile("rb")
        file.readline()
        password = "pä\"ss".encode()
        sock.sendall(b'a LOGIN "user@example.com" {%d+}\r\n' % len(password) + password +
                     b"\r\nb NOOP\r\n")
        assert file.readline().startswith(b"a OK [CAPABILITY IMAP4rev1 IDLE]")
        assert file.readline() == b"b OK noop\r\n"
        file.close()
        sock.close()
        received = fake.wait_connection()
        assert received.startswith(b"P1 LOGIN user@example.com {6}\r\n" + password + b"\r\n")
    finally:
        fake.close()


def test_upstream_that_stops_answering_ends_the_session(proxy_factory, dovecot):
    """Issue 14: a command the upstream never answers ends the session after
    timeouts.upstream_response (not after the 30-minute client idle timer)."""
    from . import fake_upstream

    fake = fake_upstream.FakeUpstream(fake_upstream.imap_mute_after_login)
    try:
        config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["imap"] = {"port": fake.port, "tls": "none"}
        # 5 s, not 1: the timer bounds every upstream reply, and the fake answering LOGIN and
        # NOOP is a thread of this process: a stall of it over 1 s ended the session early
        config["listeners"][0]["timeouts"] = {"upstream_response": "5s"}
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""  # the health check
        sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(b'a LOGIN "user@example.com" "pw"\r\nb NOOP\r\n')
        assert file.readline().startswith(b"a OK")
        assert file.readline() == b"b OK noop\r\n"
        sock.sendall(b"c SELECT INBOX\r\n")   # never answered upstream
        assert file.readline() == b"* BYE Upstream server not responding.\r\n"
        assert file.readline() == b""   # closed
        sock.close()
        # the session-end log line follows the close
        wait_for(lambda: "upstream_timeout" in proxy.logs(), "the upstream_timeout log line")
    finally:
        fake.close()


def _early_login_upstream(later_greeting: bytes, later_reply: bytes):
    """A fake upstream for the early-login tests. Connections 1 (the health check) and 2 (the
    first session) are normal ones: greeting with AUTH=PLAIN SASL-IR, then OK to the login.
    Every later connection reads the proxy's first
    line *before* greeting (a proxy that waits for the greeting would send nothing: the read
    times out and the test fails), greets with `later_greeting`, answers that line with
    `later_reply`; when the reply was not OK, it answers the next command with OK."""
    from . import fake_upstream

    count = [0]

    def script(conn: fake_upstream.FakeConn) -> None:
        count[0] += 1
        greet_first = count[0] <= 2
        if greet_first:
            conn.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake ready\r\n")
            line = conn.readline()
            if not line:   # the health check
                return
        else:
            conn.sock.settimeout(5)
            line = conn.readline()   # before the greeting
            conn.send(later_greeting)
        tag = line.split(b" ", 1)[0]
        if greet_first or later_reply.startswith(b"OK"):
            conn.send(tag + b" OK [CAPABILITY IMAP4rev1] in\r\n")
        else:
            conn.send(tag + b" " + later_reply + b"\r\n")
            line = conn.readline()
            conn.send(line.split(b" ", 1)[0] + b" OK [CAPABILITY IMAP4rev1] in\r\n")
        conn.rest()

    return fake_upstream.FakeUpstream(script)


def _log_in_through(proxy) -> bytes:
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=15)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b'a LOGIN "user@example.com" "pw"\r\n')
    reply = file.readline()
    file.close()
    sock.close()
    return reply


@pytest.mark.parametrize("later_greeting, later_reply, second_login", [
    # same capabilities: the login goes out before the greeting is read, and is answered
    (b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake ready\r\n", b"OK",
     b"P1 AUTHENTICATE PLAIN AHVzZXJAZXhhbXBsZS5jb20AcHc=\r\n"),
    # the upstream no longer offers AUTH=PLAIN: its BAD to the early AUTHENTICATE is not the
    # verdict; the login is sent again as its greeting allows (LOGIN)
    (b"* OK [CAPABILITY IMAP4rev1] fake ready\r\n", b"BAD unknown command",
     b"P1 AUTHENTICATE PLAIN AHVzZXJAZXhhbXBsZS5jb20AcHc=\r\nP2 LOGIN user@example.com pw\r\n"),
])
def test_login_sent_with_the_greeting_read(proxy_factory, dovecot, later_greeting, later_reply,
                                           second_login):
    """Once an upstream's greeting has announced its capabilities, the next session's login is
    written right after the connect, so greeting and verdict take one round trip."""
    fake = _early_login_upstream(later_greeting, later_reply)
    try:
        config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["imap"] = {"port": fake.port, "tls": "none"}
        config["upstreams"]["main"]["health_check_interval"] = "1h"
        config["upstreams"]["main"]["forward_client_ip"] = False
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""   # the health check
        fake.received.clear()
        assert _log_in_through(proxy).startswith(b"a OK [CAPABILITY IMAP4rev1]")
        assert fake.wait_connection().startswith(b"P1 AUTHENTICATE PLAIN ")   # greeted first
        assert _log_in_through(proxy).startswith(b"a OK [CAPABILITY IMAP4rev1]")
        assert fake.wait_connection() == second_login
    finally:
        fake.close()


def _greet_pause_upstream(pause: float = 2.0):
    """A fake upstream with a greeting-delay defence (like Postfix postscreen's pregreet test):
    before greeting it waits `pause` seconds for the client to speak; a client that does is
    an early talker and is dropped (what it sent is kept). Otherwise it greets with AUTH=PLAIN
    SASL-IR and answers the login with OK. A proxy that waits for the greeting never reaches
    the drop, whatever the pause; one that pipelines its login is dropped within it."""
    from . import fake_upstream

    def script(conn: fake_upstream.FakeConn) -> None:
        readable, _, _ = select.select([conn.sock], [], [], pause)
        if readable:   # spoke before the greeting: dropped
            conn.readline()
            conn.file.close()   # the socket closes with it (FakeUpstream closes the socket)
            return
        conn.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake ready\r\n")
        line = conn.readline()
        if not line:   # the health check
            return
        conn.send(line.split(b" ", 1)[0] + b" OK [CAPABILITY IMAP4rev1] in\r\n")
        conn.rest()

    return fake_upstream.FakeUpstream(script)


@pytest.mark.parametrize("pipelined_login", [True, False])
def test_pipelined_login_off_waits_for_the_greeting(proxy_factory, dovecot, pipelined_login):
    """`imap.pipelined_login: false` keeps the proxy silent until the greeting: an upstream that
    drops early talkers serves every session. With the default (true) the second session's
    login goes out before the greeting, is dropped, and the client gets a temporary failure;
    the proxy then stops sending early logins to that upstream."""
    fake = _greet_pause_upstream()
    try:
        config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["imap"] = {"port": fake.port, "tls": "none",
                                               "pipelined_login": pipelined_login}
        config["upstreams"]["main"]["health_check_interval"] = "1h"
        config["upstreams"]["main"]["forward_client_ip"] = False
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""   # the health check
        login = b"P1 AUTHENTICATE PLAIN AHVzZXJAZXhhbXBsZS5jb20AcHc=\r\n"
        assert _log_in_through(proxy).startswith(b"a OK [CAPABILITY IMAP4rev1]")
        assert fake.wait_connection() == login   # greeted first: the capabilities are known
        second = _log_in_through(proxy)
        assert fake.wait_connection() == login
        if pipelined_login:
            assert second == b"a NO [UNAVAILABLE] Server unavailable, try again later.\r\n"
            warnings = [line for line in proxy.logs().splitlines()
                        if "event=upstream_pipelined_login_off" in line]
            assert len(warnings) == 1 and "upstream=main" in warnings[0], warnings
            assert "upstreams.main.imap.pipelined_login: false" in warnings[0]
            # no greeting after an early login: that upstream gets no more early logins
            assert _log_in_through(proxy).startswith(b"a OK [CAPABILITY IMAP4rev1]")
            assert fake.wait_connection() == login
        else:
            assert second.startswith(b"a OK [CAPABILITY IMAP4rev1]")
    finally:
        fake.close()
