"""Upstream pools: two real Dovecots on 127.0.0.1 and 127.0.0.2 sharing their ports form one
upstream (`hosts:`). Every user exists on both, with a marker message saying which host served it.
Each user always reaches the same host (stickiness, as proxy/routing/pool.py orders it); when
one host is down its users go to the other at once (failover on connect error) and the others
stay where they were. The health checker probes each host: one it saw down is skipped without
a connect attempt, and one that answers again gets its users back."""

from __future__ import annotations

import imaplib
import poplib
import re
import subprocess
import sys

import pytest

from proxy.routing import pool
from support.dovecot import free_ports, start_dovecot
from support.polling import TIMEOUT, wait_for

HOSTS = ["127.0.0.1", "127.0.0.2"]
USERS = [f"p{i}@pool.example" for i in range(8)]


@pytest.fixture
def pair(dovecot_root):
    first = start_dovecot(dovecot_root)
    second = start_dovecot(dovecot_root, host="127.0.0.2",
                           ports=(first.imap_port, first.pop3_port))
    for dovecot in (first, second):
        for user in USERS:
            dovecot.add_user(user, "pw")
            dovecot.deliver(user, f"Subject: on {dovecot.host}\r\n\r\nx\r\n".encode())
    yield first, second
    second.stop()
    first.stop()


def served_by_imap(port: int, user: str) -> str:
    with imaplib.IMAP4("127.0.0.1", port, timeout=15) as imap:
        imap.login(user, "pw")
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        imap.logout()
    return data[0][1].strip().decode().removeprefix("Subject: on ")


def served_by_pop3(port: int, user: str) -> str:
    pop = poplib.POP3("127.0.0.1", port, timeout=15)
    try:
        pop.user(user)
        pop.pass_("pw")
        subject = next(line for line in pop.top(1, 0)[1] if line.startswith(b"Subject:"))
    finally:
        pop.quit()
    return subject.decode().removeprefix("Subject: on ")


def test_sticky_then_failover(pair, proxy_factory) -> None:
    first, second = pair
    proxy = proxy_factory({
        "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1:0",
                       "allow_plaintext_auth": True},
                      {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1:0",
                       "allow_plaintext_auth": True}],
        "upstreams": {"pool": {"hosts": HOSTS, "imap": {"port": first.imap_port},
                               "pop3": {"port": first.pop3_port}}},
        "routes": [{"match": "*", "upstream": "pool"}],
        "auth_throttle": {"enabled": False},
    })
    home = {user: pool.preference(user, HOSTS)[0] for user in USERS}
    assert set(home.values()) == set(HOSTS)  # these users spread over both hosts
    for _ in range(2):  # the same user reaches the same host, every time, both protocols
        assert {u: served_by_imap(proxy.port("imap"), u) for u in USERS} == home
        assert {u: served_by_pop3(proxy.port("pop3"), u) for u in USERS} == home
    second.stop()  # 127.0.0.2 goes away: its users fail over, the others stay
    expected = {user: "127.0.0.1" for user in USERS}
    assert {u: served_by_imap(proxy.port("imap"), u) for u in USERS} == expected
    assert {u: served_by_pop3(proxy.port("pop3"), u) for u in USERS} == expected
    assert "event=upstream_failover" in proxy.logs()


def wait_log(proxy, pattern: str, offset: int, timeout: float = TIMEOUT) -> None:
    regex = re.compile(pattern)
    wait_for(lambda: regex.search(proxy.logs()[offset:]), f"a log line matching {pattern!r}",
             timeout=timeout, interval=0.05)


def health_checked_pool(first) -> dict:
    """An IMAP listener routing every user to the pool of HOSTS (`first`'s port), checked every
    0.2 s."""
    return {
        "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1:0",
                       "allow_plaintext_auth": True}],
        "upstreams": {"pool": {"hosts": HOSTS, "imap": {"port": first.imap_port},
                               "health_check_interval": "0.2s"}},
        "routes": [{"match": "*", "upstream": "pool"}],
        "auth_throttle": {"enabled": False},
    }


def test_health_checks_per_host(pair, proxy_factory) -> None:
    first, second = pair
    proxy = proxy_factory(health_checked_pool(first))
    away = [u for u in USERS if pool.preference(u, HOSTS)[0] == "127.0.0.2"]
    assert away and all(served_by_imap(proxy.port("imap"), u) == "127.0.0.2" for u in away)
    offset = len(proxy.logs())
    second.stop()
    wait_log(proxy, r"event=upstream_health upstream=pool host=127\.0\.0\.2 protocol=imap "
             r"up=False", offset)
    offset = len(proxy.logs())
    assert all(served_by_imap(proxy.port("imap"), u) == "127.0.0.1" for u in away)
    assert "upstream_failover" not in proxy.logs()[offset:]   # the checker knew: no try
    second.start()
    wait_log(proxy, r"event=upstream_health upstream=pool host=127\.0\.0\.2 protocol=imap "
             r"up=True", offset)
    assert all(served_by_imap(proxy.port("imap"), u) == "127.0.0.2" for u in away)  # home again


def test_health_checks_reach_every_worker(pair, proxy_factory, tmp_path) -> None:
    """With `workers: 2` the checker runs in the supervisor: its verdict on a host must reach
    both workers, so a user whose home host the checker saw down goes straight to the other
    host in either worker, without a connect attempt (no `upstream_failover`). Without the
    supervisor's publish each worker would learn it only from a failed connect of its own."""
    first, second = pair
    (admin_port,) = free_ports(1)
    (tmp_path / "admin.token").write_text("s3cret\n")
    proxy = proxy_factory({
        **health_checked_pool(first),
        "workers": 2,
        "admin": {"address": f"127.0.0.1:{admin_port}",
                  "token": {"file": str(tmp_path / "admin.token")}},
    }, ready_timeout=60)
    away = [u for u in USERS if pool.preference(u, HOSTS)[0] == "127.0.0.2"]
    assert away
    offset = len(proxy.logs())
    second.stop()
    wait_log(proxy, r"event=upstream_health upstream=pool host=127\.0\.0\.2 protocol=imap "
             r"up=False", offset)
    offset = len(proxy.logs())
    held: list[imaplib.IMAP4] = []
    try:   # sessions of the away users, held open until both workers have served some
        while len(held) < WORKERS_BOUND and workers_serving(proxy) != {"0", "1"}:
            user = away[len(held) % len(away)]
            client = imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=15)
            held.append(client)
            client.login(user, "pw")
            client.select("INBOX", readonly=True)
            _, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert data[0][1].strip() == b"Subject: on 127.0.0.1"
        assert workers_serving(proxy) == {"0", "1"}
    finally:
        for client in held:
            client.logout()
    assert "upstream_failover" not in proxy.logs()[offset:]   # no worker tried the dead host


WORKERS_BOUND = 64   # sessions opened until both workers hold one: only a broken build reaches it


def workers_serving(proxy) -> set[str]:
    """The workers holding a session, from the admin `who` verb."""
    result = subprocess.run([sys.executable, "-m", "proxy", "who", "--config",
                             str(proxy.config_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    return {dict(zip(header.split(), row.split(), strict=True))["worker"] for row in rows}
