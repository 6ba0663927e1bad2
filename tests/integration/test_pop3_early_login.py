"""POP3 early login (relay/pop3_upstream.py, session/early_login.py): once an upstream's CAPA has
announced PIPELINING and a login method, later sessions write XCLIENT, the login and CAPA right
after the connect. Against a real Dovecot (through a relay that holds each greeting back until
the proxy has spoken, to see what it wrote first) and small fake upstreams for what Dovecot
cannot play: an early-talker defence, and capabilities that change between sessions."""

from __future__ import annotations

import base64
import select
import socket
import threading

import pytest

from support.proxyproc import relay_config
from support.threaded_server import ThreadedServer

from . import fake_upstream

HOST = "127.0.0.1"
HOLD = 1.0   # seconds a greeting is held back waiting for the proxy to speak first


class GreetingHolder:
    """A TCP relay in front of `port` that holds each greeting until the proxy has written
    something (at most HOLD seconds), then passes everything through. `.early` gets what each
    connection sent before its greeting (b"" when it waited), when that connection ends."""

    def __init__(self, port: int):
        self.port_behind = port
        self.early: list[bytes] = []
        self.ended = threading.Semaphore(0)
        self._server = ThreadedServer(self._relay, "holding-relay")
        self.port = self._server.port

    def _relay(self, client: socket.socket) -> None:
        early = b""
        try:
            with client, socket.create_connection((HOST, self.port_behind), timeout=10) as up:
                greeting = up.makefile("rb").readline()
                if select.select([client], [], [], HOLD)[0]:
                    early = client.recv(65536)
                    up.sendall(early)
                client.sendall(greeting)
                _splice(client, up)
        except OSError:
            pass
        finally:
            self.early.append(early)
            self.ended.release()

    def next_early(self) -> bytes:
        assert self.ended.acquire(timeout=15), "no connection ended at the greeting holder"
        return self.early[-1]

    def close(self) -> None:
        self._server.close()


def _splice(a: socket.socket, b: socket.socket) -> None:
    peers = {a: b, b: a}
    while True:
        for sock in select.select(list(peers), [], [], 15)[0]:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)


def _pop3_session(proxy, commands: bytes, source: str = HOST) -> list[bytes]:
    """One pipelined client session from `source`; the proxy's reply lines until it closes."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((HOST, proxy.port("pop3")))
    sock.settimeout(15)
    with sock, sock.makefile("rb") as file:
        assert file.readline().startswith(b"+OK")
        sock.sendall(commands)
        return file.read().splitlines()


def _plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def test_early_login_against_dovecot(proxy_factory, dovecot, user):
    """The first session learns Dovecot's capabilities the ordinary way; the next ones write
    XCLIENT, AUTH PLAIN and CAPA before the greeting, and work: the mailbox is read, Dovecot
    logs the client's own address, a wrong password is refused as such."""
    name, password = user
    dovecot.deliver(name, b"Subject: early\r\n\r\nHello.\r\n")
    holder = GreetingHolder(dovecot.pop3_port)
    try:
        config = relay_config(dovecot, listeners=("pop3",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["pop3"]["port"] = holder.port
        config["upstreams"]["main"]["forward_client_ip"] = True
        config["upstreams"]["main"]["health_check_interval"] = "1h"
        proxy = proxy_factory(config)
        assert holder.next_early() == b""   # the health check
        login = b"USER %s\r\nPASS %s\r\n" % (name.encode(), password.encode())
        first = _pop3_session(proxy, login + b"QUIT\r\n", "127.0.0.7")
        assert first[1].startswith(b"+OK Logged in") and holder.next_early() == b""
        second = _pop3_session(proxy, login + b"STAT\r\nRETR 1\r\nCAPA\r\nQUIT\r\n", "127.0.0.8")
        early = holder.next_early()
        assert early.startswith(b"XCLIENT ADDR=127.0.0.8 PORT=")
        assert early.split(b"\r\n", 1)[1] == b"AUTH PLAIN %s\r\nCAPA\r\n" % _plain(name, password)
        assert second[1].startswith(b"+OK Logged in") and second[2].startswith(b"+OK 1 ")
        assert b"Hello." in second and b"UIDL" in second   # RETR, then CAPA after login
        assert not [line for line in second if line.startswith((b"SASL", b"STLS", b"USER"))]
        dovecot.wait_for_log(f"user=<{name}>, rip=127.0.0.8")
        wrong = _pop3_session(proxy, b"USER %s\r\nPASS nope\r\nQUIT\r\n" % name.encode())
        assert wrong[1].startswith(b"-ERR [AUTH]"), wrong
        assert b"AUTH PLAIN " in holder.next_early()
    finally:
        holder.close()


CAPA = b"+OK\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
CAPA_NO_PLAIN = b"+OK\r\nPIPELINING\r\nUSER\r\n.\r\n"


def _answer(conn: fake_upstream.FakeConn, capa: bytes, auth_plain: bool) -> None:
    """A tiny POP3 server after its greeting: CAPA, AUTH PLAIN (when `auth_plain`), USER/PASS
    (any password but "nope"), QUIT."""
    while line := conn.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"CAPA":
            conn.send(capa)
        elif verb == b"AUTH" and auth_plain:
            conn.send(b"+OK in\r\n")
        elif verb == b"USER":
            conn.send(b"+OK\r\n")
        elif verb == b"PASS" and line != b"PASS nope\r\n":
            conn.send(b"+OK in\r\n")
        elif verb == b"QUIT":
            conn.send(b"+OK bye\r\n")
            return
        else:
            conn.send(b"-ERR [AUTH] no\r\n")


def _greet_pause_upstream(pause: float = 2.0) -> fake_upstream.FakeUpstream:
    """An upstream with a greeting-delay defence: a client that speaks within `pause` before the
    greeting is an early talker and is dropped. A proxy that waits for the greeting never
    reaches the drop; one that writes its login early is dropped within it."""
    def script(conn: fake_upstream.FakeConn) -> None:
        if select.select([conn.sock], [], [], pause)[0]:
            conn.readline()
            conn.file.close()
            return
        conn.send(b"+OK fake ready\r\n")
        _answer(conn, CAPA, auth_plain=True)

    return fake_upstream.FakeUpstream(script)


def _fake_config(dovecot, port: int, **pop3: object) -> dict:
    config = relay_config(dovecot, listeners=("pop3",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["pop3"] = {"port": port, "tls": "none", **pop3}
    config["upstreams"]["main"]["health_check_interval"] = "1h"
    return config


LOGIN = b"USER user@example.com\r\nPASS pw\r\nQUIT\r\n"
PLAIN = b"AUTH PLAIN %s\r\n" % _plain("user@example.com", "pw")


@pytest.mark.parametrize("pipelined_login", [True, False])
def test_pipelined_login_off_waits_for_the_greeting(proxy_factory, dovecot, pipelined_login):
    """`pop3.pipelined_login: false` keeps the proxy silent until the greeting. With the default
    the second session's login goes out early, is dropped, and the client gets a temporary
    failure; that upstream gets no more early logins, and one warning names the setting."""
    fake = _greet_pause_upstream()
    try:
        proxy = proxy_factory(_fake_config(dovecot, fake.port, pipelined_login=pipelined_login))
        assert fake.wait_connection() == b""   # the health check
        assert _pop3_session(proxy, LOGIN)[1] == b"+OK Logged in."
        assert fake.wait_connection() == b"CAPA\r\n" + PLAIN + b"CAPA\r\nQUIT\r\n"
        second = _pop3_session(proxy, LOGIN)
        if pipelined_login:
            assert second[1].startswith(b"-ERR [SYS/TEMP]"), second
            assert fake.wait_connection() == PLAIN   # dropped: the rest of its write unread
            warnings = [line for line in proxy.logs().splitlines()
                        if "event=upstream_pipelined_login_off" in line]
            assert len(warnings) == 1 and "upstream=main" in warnings[0], warnings
            assert "upstreams.main.pop3.pipelined_login: false" in warnings[0]
            assert _pop3_session(proxy, LOGIN)[1] == b"+OK Logged in."
        else:
            assert second[1] == b"+OK Logged in."
        assert fake.wait_connection() == b"CAPA\r\n" + PLAIN + b"CAPA\r\nQUIT\r\n"
    finally:
        fake.close()


@pytest.mark.parametrize("later_capa, later_plain, later_received", [
    # same capabilities: the early login's refusal is the verdict
    (CAPA, False, PLAIN + b"CAPA\r\n"),
    # SASL PLAIN withdrawn: the refusal is not the verdict; the login is redone as the CAPA
    # after it allows (USER/PASS, still pipelined)
    (CAPA_NO_PLAIN, False,
     PLAIN + b"CAPA\r\nUSER user@example.com\r\nPASS pw\r\nCAPA\r\nQUIT\r\n"),
])
def test_early_login_for_changed_capabilities_is_redone(proxy_factory, dovecot, later_capa,
                                                        later_plain, later_received):
    """An early login is built for what the upstream announced before; when it is refused and
    the CAPA written after it shows other capabilities, it is done again for those."""
    count = [0]

    def script(conn: fake_upstream.FakeConn) -> None:
        count[0] += 1
        conn.send(b"+OK fake ready\r\n")
        if count[0] <= 2:   # the health check, the first session
            _answer(conn, CAPA, auth_plain=True)
        else:
            _answer(conn, later_capa, auth_plain=later_plain)

    fake = fake_upstream.FakeUpstream(script)
    try:
        proxy = proxy_factory(_fake_config(dovecot, fake.port))
        assert fake.wait_connection() == b""   # the health check
        assert _pop3_session(proxy, LOGIN)[1] == b"+OK Logged in."
        assert fake.wait_connection() == b"CAPA\r\n" + PLAIN + b"CAPA\r\nQUIT\r\n"
        second = _pop3_session(proxy, LOGIN)
        assert fake.wait_connection() == later_received
        expected = b"-ERR [AUTH]" if later_capa == CAPA else b"+OK Logged in."
        assert second[1].startswith(expected), second
    finally:
        fake.close()


def test_silent_upstream_after_an_early_login_turns_it_off(proxy_factory, dovecot):
    """An upstream that stays silent (no greeting) after an early login, past the listener's
    `upstream_connect` timeout, counts like one that drops it: the session gets a temporary
    failure, one warning is logged, and the next session waits for the greeting."""
    count = [0]

    def script(conn: fake_upstream.FakeConn) -> None:
        count[0] += 1
        if count[0] == 3:   # the second session: its early login is read, never answered
            conn.rest()
            return
        conn.send(b"+OK fake ready\r\n")
        _answer(conn, CAPA, auth_plain=True)

    fake = fake_upstream.FakeUpstream(script)
    try:
        config = _fake_config(dovecot, fake.port)
        # 5 s, not 1: the fake greeting the other sessions is a thread of this process, and a
        # stall of it over 1 s failed a session that had to log in
        config["listeners"][0]["timeouts"] = {"upstream_connect": "5s"}
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""   # the health check
        assert _pop3_session(proxy, LOGIN)[1] == b"+OK Logged in."
        assert fake.wait_connection() == b"CAPA\r\n" + PLAIN + b"CAPA\r\nQUIT\r\n"
        assert _pop3_session(proxy, LOGIN)[1].startswith(b"-ERR [SYS/TEMP]")
        assert fake.wait_connection() == PLAIN + b"CAPA\r\n"
        warnings = [line for line in proxy.logs().splitlines()
                    if "event=upstream_pipelined_login_off" in line]
        assert len(warnings) == 1 and "greeting: nothing within 5s" in warnings[0], warnings
        assert _pop3_session(proxy, LOGIN)[1] == b"+OK Logged in."
        assert fake.wait_connection() == b"CAPA\r\n" + PLAIN + b"CAPA\r\nQUIT\r\n"
    finally:
        fake.close()
