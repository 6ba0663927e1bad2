"""The `http` lookup against nginx's own mail proxy: ONE auth_http service (tests/support/
authservice.py) drives nginx (Debian nginx + libnginx-mod-mail) and mailproxy side by side, both
routing two users to two real Dovecots, refusing a wrong password (closing, or after Auth-Wait
keeping the connection), waiting and asking again on `Auth-Status: WAIT`, rewriting the user and
password, and answering when the service is down.
Each test states what each front sends, byte for byte, so the two can be compared at a glance.
"""

from __future__ import annotations

import socket
import time

import pytest

from support.authservice import Account, AuthService
from support.dovecot import free_ports, start_dovecot
from support.nginx import NginxMail
from support.proxyproc import ProxyProcess, traceback_report

FRONTS = ("nginx", "mailproxy")


class Raw:
    """A line-level client: exact bytes in, exact lines out."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def __enter__(self) -> "Raw":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.file.readline()

    def lines_until(self, prefix: bytes) -> list[bytes]:
        lines = [self.file.readline()]
        while lines[-1] and not lines[-1].startswith(prefix):
            lines.append(self.file.readline())
        return lines

    def at_eof(self) -> bool:
        return self.file.readline() == b""


def mailproxy_config(auth_url: str, d1, cache: bool = False) -> dict:
    ttl = "60s" if cache else "0"
    return {
        "listeners": [
            {"name": "imap", "protocol": "imap", "address": "127.0.0.1:0",
             "allow_plaintext_auth": True},
            {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1:0",
             "allow_plaintext_auth": True},
        ],
        "upstreams": {"d1": {"host": d1.host, "imap": {"port": d1.imap_port},
                             "pop3": {"port": d1.pop3_port}}},
        # 10 s: a hang bound (no test here waits for it; the service is in this process, so a
        # stall of pytest delays its answers), below the clients' 15 s
        "lookups": [{"http": {"url": auth_url, "timeout": "10s",
                              "cache": {"ttl": ttl, "negative_ttl": ttl}}}],
        "auth_throttle": {"enabled": False},
    }


@pytest.fixture(scope="module")
def world(dovecot_root, tmp_path_factory):
    d1, d2 = start_dovecot(dovecot_root), start_dovecot(dovecot_root)
    ann, ann_pw = d1.add_user("ann@one.example")
    bob, bob_pw = d2.add_user("bob@two.example")
    carl, carl_pw = d2.add_user("carl@two.example")
    d1.deliver(ann, b"Subject: ann on one\r\n\r\nhi\r\n")
    d2.deliver(bob, b"Subject: bob on two\r\n\r\nhi\r\n")
    d2.deliver(carl, b"Subject: carl on two\r\n\r\nhi\r\n")
    ports = {d: {"imap": d.imap_port, "pop3": d.pop3_port} for d in (d1, d2)}
    service = AuthService({
        ann: Account(ann_pw, "127.0.0.1", ports[d1]),
        bob: Account(bob_pw, "127.0.0.1", ports[d2]),
        # an alias with its own password: the service names the real account (rewriting)
        "alias@two.example": Account("alias-pw", "127.0.0.1", ports[d2],
                                     upstream_user=carl, upstream_password=carl_pw),
    })
    nginx = NginxMail(tmp_path_factory.mktemp("nginx"), service.url)
    proxy = ProxyProcess(mailproxy_config(service.url, d1), tmp_path_factory.mktemp("proxy"))
    world = {
        "service": service, "d1": d1, "d2": d2,
        "users": {"ann": (ann, ann_pw), "bob": (bob, bob_pw), "carl": (carl, carl_pw)},
        "ports": {"nginx": {"imap": nginx.imap_port, "pop3": nginx.pop3_port},
                  "mailproxy": {"imap": proxy.port("imap"), "pop3": proxy.port("pop3")}},
        "proxy": proxy, "nginx": nginx,
    }
    yield world
    proxy.stop()
    nginx.stop()
    service.stop()
    d1.stop()
    d2.stop()
    report = traceback_report([proxy])
    if report:
        pytest.fail(report, pytrace=False)


def subjects_imap(port: int, user: str, password: str) -> list[bytes]:
    import imaplib

    with imaplib.IMAP4("127.0.0.1", port, timeout=15) as imap:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        imap.logout()
    return [part[1].strip() for part in data if isinstance(part, tuple)]


def subjects_pop3(port: int, user: str, password: str) -> list[bytes]:
    import poplib

    pop = poplib.POP3("127.0.0.1", port, timeout=15)
    try:
        pop.user(user)
        pop.pass_(password)
        count = pop.stat()[0]
        return [next(line for line in pop.top(i, 0)[1] if line.startswith(b"Subject:"))
                for i in range(1, count + 1)]
    finally:
        pop.quit()


@pytest.mark.parametrize("front", FRONTS)
def test_two_users_two_dovecots(world, front: str) -> None:
    ports = world["ports"][front]
    (ann, ann_pw), (bob, bob_pw) = world["users"]["ann"], world["users"]["bob"]
    asked = len(world["service"].asked(ann))
    assert subjects_imap(ports["imap"], ann, ann_pw) == [b"Subject: ann on one"]
    assert subjects_imap(ports["imap"], bob, bob_pw) == [b"Subject: bob on two"]
    assert subjects_pop3(ports["pop3"], ann, ann_pw) == [b"Subject: ann on one"]
    assert subjects_pop3(ports["pop3"], bob, bob_pw) == [b"Subject: bob on two"]
    requests = world["service"].asked(ann)[asked:]
    assert [(r["Auth-Method"], r["Auth-Protocol"], r["Auth-Login-Attempt"], r["Client-IP"],
             r["Auth-Pass"]) for r in requests] == [
        ("plain", "imap", "1", "127.0.0.1", ann_pw), ("plain", "pop3", "1", "127.0.0.1", ann_pw)]
    assert all("Client-Host" not in r for r in requests)


@pytest.mark.parametrize("front", FRONTS)
def test_user_rewriting(world, front: str) -> None:
    ports = world["ports"][front]
    assert subjects_imap(ports["imap"], "alias@two.example", "alias-pw") == [
        b"Subject: carl on two"]
    assert subjects_pop3(ports["pop3"], "alias@two.example", "alias-pw") == [
        b"Subject: carl on two"]


WRONG = {
    ("nginx", "imap"): b"a NO Invalid login or password\r\n",
    ("mailproxy", "imap"): b"a NO [AUTHENTICATIONFAILED] Invalid login or password\r\n",
    ("nginx", "pop3"): b"-ERR Invalid login or password\r\n",
    ("mailproxy", "pop3"): b"-ERR [AUTH] Invalid login or password\r\n",
}


@pytest.mark.parametrize("front", FRONTS)
def test_wrong_password_refused_and_closed(world, front: str) -> None:
    ann, _ = world["users"]["ann"]
    with Raw(world["ports"][front]["imap"]) as imap:
        assert imap.ask(f"a LOGIN {ann} wrong".encode()) == WRONG[front, "imap"]
        assert imap.at_eof()
    with Raw(world["ports"][front]["pop3"]) as pop:
        assert pop.ask(f"USER {ann}".encode()).startswith(b"+OK")
        assert pop.ask(b"PASS wrong") == WRONG[front, "pop3"]
        assert pop.at_eof()


@pytest.mark.parametrize("front", FRONTS)
def test_auth_wait_keeps_the_connection(world, front: str) -> None:
    """With Auth-Wait: 1 the refusal comes after (at least) a second and the client may try
    again on the same connection; the second attempt is Auth-Login-Attempt: 2."""
    ann, ann_pw = world["users"]["ann"]
    service = world["service"]
    service.wait = 1
    try:
        with Raw(world["ports"][front]["imap"]) as imap:
            started = time.monotonic()
            assert imap.ask(f"a LOGIN {ann} wrong".encode()) == WRONG[front, "imap"]
            assert time.monotonic() - started >= 1.0
            imap.sock.sendall(f"b LOGIN {ann} {ann_pw}\r\n".encode())
            lines = imap.lines_until(b"b ")
            assert lines[-1].startswith(b"b OK"), lines
        attempts = [r["Auth-Login-Attempt"] for r in service.asked(ann)[-2:]]
        assert attempts == ["1", "2"]
    finally:
        service.wait = None


@pytest.mark.parametrize("front", FRONTS)
def test_auth_status_wait_asks_again(world, front: str) -> None:
    """Auth-Status: WAIT with Auth-Wait: 1: both fronts wait, ask again, and log in on the
    third answer."""
    ann, ann_pw = world["users"]["ann"]
    service = world["service"]
    asked = len(service.asked(ann))
    service.waits[ann] = 2
    try:
        started = time.monotonic()
        assert subjects_imap(world["ports"][front]["imap"], ann, ann_pw) == [
            b"Subject: ann on one"]
        assert time.monotonic() - started >= 2.0
        assert [r["Auth-Login-Attempt"] for r in service.asked(ann)[asked:]] == ["1", "1", "1"]
    finally:
        service.waits.pop(ann, None)


DOWN = {
    ("nginx", "imap"): [b"* BAD internal server error\r\n"],
    ("mailproxy", "imap"): [b"a NO [UNAVAILABLE] Server unavailable, try again later.\r\n"],
    ("nginx", "pop3"): [b"-ERR internal server error\r\n"],
    ("mailproxy", "pop3"): [b"-ERR [SYS/TEMP] Server unavailable, try again later.\r\n"],
}


@pytest.mark.parametrize("front", FRONTS)
def test_service_down(world, front: str, tmp_path) -> None:
    """Nobody listens at the auth URL: nginx says "internal server error" and closes; mailproxy
    answers a tempfail (RFC 5530 UNAVAILABLE, RFC 3206 SYS/TEMP) and keeps the connection."""
    (dead_port,) = free_ports(1)
    url = f"http://127.0.0.1:{dead_port}/auth"
    ann, ann_pw = world["users"]["ann"]
    if front == "nginx":
        server = NginxMail(tmp_path / "nginx", url)
        ports = {"imap": server.imap_port, "pop3": server.pop3_port}
    else:
        server = ProxyProcess(mailproxy_config(url, world["d1"]), tmp_path / "proxy")
        ports = {"imap": server.port("imap"), "pop3": server.port("pop3")}
    try:
        with Raw(ports["imap"]) as imap:
            assert [imap.ask(f"a LOGIN {ann} {ann_pw}".encode())] == DOWN[front, "imap"]
        with Raw(ports["pop3"]) as pop:
            assert pop.ask(f"USER {ann}".encode()).startswith(b"+OK")
            assert [pop.ask(f"PASS {ann_pw}".encode())] == DOWN[front, "pop3"]
    finally:
        server.stop()
    if front == "mailproxy":
        assert "event=lookup_error" in server.logs() and ann_pw not in server.logs()


def test_mailproxy_caches_answers(world, tmp_path) -> None:
    """With the cache on, a second login of the same user with the same password is not asked
    again; a different password is (the key holds a hash of the password)."""
    ann, ann_pw = world["users"]["ann"]
    service = world["service"]
    proxy = ProxyProcess(mailproxy_config(service.url, world["d1"], cache=True), tmp_path / "p")
    try:
        before = len(service.asked(ann))
        for _ in range(3):
            assert subjects_imap(proxy.port("imap"), ann, ann_pw) == [b"Subject: ann on one"]
        assert len(service.asked(ann)) == before + 1
        with Raw(proxy.port("imap")) as imap:
            assert imap.ask(f"a LOGIN {ann} other".encode()) == WRONG["mailproxy", "imap"]
        assert len(service.asked(ann)) == before + 2
    finally:
        proxy.stop()
    assert traceback_report([proxy]) is None
