"""Warm upstream connections (`upstreams.NAME.<protocol>.warm_pool`, session/warm_pool.py,
relay/warm_fill.py): logins take a connection opened and greeted ahead of them. Against a real
Dovecot (the pool's path used, the real client's address forwarded, a restarted Dovecot's dead
connections never reaching a client) and a small threaded fake upstream for what Dovecot
cannot be made to do on cue (drop a connection between its take and the login's verdict) and
to watch the pooled connections close on reload and drain."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import socket
import threading
import urllib.request

import yaml

from support.polling import wait_for
from support.ports import free_ports
from support.proxyproc import relay_config
from support.threaded_server import ThreadedServer

HOST = "127.0.0.1"


def warm_counts(proxy, protocol: str) -> dict[str, float]:
    """mailproxy_upstream_warm_pool_total{upstream="main", protocol} by event, from /metrics."""
    text = urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics",
                                  timeout=10).read().decode()
    pattern = (r'^mailproxy_upstream_warm_pool_total\{event="(\w+)",protocol="%s",'
               r'upstream="main"\} (\S+)$' % protocol)
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def wait_opened(proxy, protocol: str, count: int) -> None:
    wait_for(lambda: warm_counts(proxy, protocol).get("opened") == count,
             f"{count} warm {protocol} connections opened")


class IMAPFrom(imaplib.IMAP4):
    """imaplib from a chosen loopback source address (Dovecot logs it as rip=)."""

    def __init__(self, port: int, source: str):
        self.source = source
        super().__init__(HOST, port, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))


class POP3From(poplib.POP3):
    def __init__(self, port: int, source: str):
        self.source = source
        super().__init__(HOST, port, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))


def _warm_config(dovecot, protocol: str, size: int = 1, max_age: str = "30s") -> dict:
    config = relay_config(dovecot, listeners=(protocol,), allow_plaintext_auth=True)
    main = config["upstreams"]["main"]
    main[protocol]["warm_pool"] = {"size": size, "max_age": max_age}
    main["forward_client_ip"] = True
    main["health_check_interval"] = "1h"
    return config


def test_imap_logins_take_warm_connections(proxy_factory, dovecot, user):
    """Each login takes a pooled connection (hit, none missed), the pool is filled again, the
    session works, and Dovecot sees each client's own address (ID sent at login)."""
    name, password = user
    dovecot.deliver(name, b"Subject: warm\r\n\r\nHello.\r\n")
    proxy = proxy_factory(_warm_config(dovecot, "imap"))
    for opened, source in ((1, "127.0.0.21"), (2, "127.0.0.22")):
        wait_opened(proxy, "imap", opened)
        client = IMAPFrom(proxy.port("imap"), source)
        assert client.login(name, password)[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"1"])
        typ, data = client.fetch("1", "(BODY[TEXT])")
        assert typ == "OK" and data[0][1] == b"Hello.\r\n"
        client.logout()
        dovecot.wait_for_log(f"user=<{name}>, rip={source}")
    wait_opened(proxy, "imap", 3)
    counts = warm_counts(proxy, "imap")
    assert (counts["hit"], counts["miss"], counts["stale"], counts["lost"]) == (2, 0, 0, 0)


def test_pop3_logins_take_warm_connections(proxy_factory, dovecot, user):
    """The same for POP3: XCLIENT with the client's address, then the login, on a pooled
    connection whose greeting and CAPA were read ahead."""
    name, password = user
    dovecot.deliver(name, b"Subject: warm\r\n\r\nHello.\r\n")
    proxy = proxy_factory(_warm_config(dovecot, "pop3"))
    for opened, source in ((1, "127.0.0.23"), (2, "127.0.0.24")):
        wait_opened(proxy, "pop3", opened)
        client = POP3From(proxy.port("pop3"), source)
        client.user(name)
        assert client.pass_(password).startswith(b"+OK")
        assert client.stat()[0] == 1
        assert b"Hello." in client.retr(1)[1]
        client.quit()
        dovecot.wait_for_log(f"user=<{name}>, rip={source}")
    counts = warm_counts(proxy, "pop3")
    assert (counts["hit"], counts["miss"], counts["stale"], counts["lost"]) == (2, 0, 0, 0)


def test_restarted_dovecot_never_hands_a_dead_connection(proxy_factory, dovecot_factory):
    """Dovecot restarted under a full pool, its login processes killed with it (as systemd
    does): the pooled connections are closed by then, and the next login is answered on a
    fresh one (both counted stale, never used); then the pool refills from the new Dovecot
    and logins hit again."""
    server = dovecot_factory(ports=tuple(free_ports(2)))
    name, password = server.add_user()
    proxy = proxy_factory(_warm_config(server, "imap", size=2))
    wait_opened(proxy, "imap", 2)
    master = server.master_pid
    server.stop()
    _kill_group(master)   # the login processes still holding the pooled connections
    server.start()
    client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    assert client.login(name, password)[0] == "OK"
    client.logout()
    counts = warm_counts(proxy, "imap")
    assert (counts["stale"], counts["hit"], counts["lost"]) == (2, 0, 0), counts
    wait_opened(proxy, "imap", 4)
    client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    assert client.login(name, password)[0] == "OK"
    client.logout()
    assert warm_counts(proxy, "imap")["hit"] == 1


def test_login_process_of_a_previous_run_is_retried_fresh(proxy_factory, dovecot_factory):
    """Dovecot restarted while its old login processes live on with the pooled connections:
    they answer a login with a temporary failure (the auth server they knew is gone); the
    proxy asks again on a fresh connection, once, and the client is logged in."""
    server = dovecot_factory(ports=tuple(free_ports(2)))
    name, password = server.add_user()
    proxy = proxy_factory(_warm_config(server, "pop3", size=1))
    wait_opened(proxy, "pop3", 1)
    server.stop()
    server.start()
    client = poplib.POP3(HOST, proxy.port("pop3"), timeout=30)
    client.user(name)
    assert client.pass_(password).startswith(b"+OK")
    client.quit()
    counts = warm_counts(proxy, "pop3")
    assert (counts["hit"], counts["lost"]) == (1, 1), counts


def _kill_group(pid: int | None) -> None:
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class FakeImap:
    """A threaded IMAP upstream (one thread per connection): greets with its capabilities,
    answers LOGIN/AUTHENTICATE with OK and LOGOUT with BYE. With `drop_logins` set, that many
    login lines are met by closing the connection instead. `silent_ends` counts connections
    that ended having received nothing (a pooled connection the proxy closed unused)."""

    GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR ID] fake ready\r\n"

    def __init__(self) -> None:
        self.drop_logins = 0
        self.logins = 0
        self.silent_ends = 0
        self.open = 0
        self._lock = threading.Lock()
        self._server = ThreadedServer(self._serve, "fake-imap")
        self.port = self._server.port

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.open += 1
        received = b""
        try:
            with conn, conn.makefile("rb") as lines:
                conn.sendall(self.GREETING)
                while line := lines.readline():
                    received += line
                    if not self._answer(conn, line):
                        return
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
                self.silent_ends += not received

    def _answer(self, conn: socket.socket, line: bytes) -> bool:
        tag, _, rest = line.partition(b" ")
        verb = rest.split(b" ", 1)[0].strip().upper()
        if verb in (b"LOGIN", b"AUTHENTICATE"):
            with self._lock:
                drop, self.drop_logins = self.drop_logins > 0, max(0, self.drop_logins - 1)
                self.logins += not drop
            if drop:
                return False
            conn.sendall(tag + b" OK [CAPABILITY IMAP4rev1 ID] in\r\n")
        elif verb == b"LOGOUT":
            conn.sendall(b"* BYE bye\r\n" + tag + b" OK out\r\n")
            return False
        else:
            conn.sendall(tag + b" OK done\r\n")
        return True

    def close(self) -> None:
        self._server.close()


def _fake_config(dovecot, fake: FakeImap, size: int) -> dict:
    config = _warm_config(dovecot, "imap", size=size)
    config["upstreams"]["main"]["imap"]["port"] = fake.port
    return config


def test_connection_dropped_after_take_is_retried_fresh(proxy_factory, dovecot):
    """The upstream closes a taken connection on the login (after the take's check): the login
    is written again on a fresh connection and the client never sees the loss."""
    fake = FakeImap()
    try:
        proxy = proxy_factory(_fake_config(dovecot, fake, size=1))
        wait_opened(proxy, "imap", 1)
        fake.drop_logins = 1
        client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
        assert client.login("someone", "secret")[0] == "OK"
        client.logout()
        counts = warm_counts(proxy, "imap")
        assert (counts["hit"], counts["lost"], fake.logins) == (1, 1, 1), counts
    finally:
        fake.close()


def test_reload_and_drain_close_pooled_connections(proxy_factory, dovecot):
    """SIGHUP: the old runtime's pooled connections are closed unused and the new config's pool
    is filled; SIGTERM: the pool is closed at the drain's start."""
    fake = FakeImap()
    try:
        proxy = proxy_factory(_fake_config(dovecot, fake, size=2))
        wait_opened(proxy, "imap", 2)
        # (the health check's connection at start-up ends silent too)
        wait_for(lambda: (fake.open, fake.silent_ends) == (2, 1),
                 "two pooled connections open at the fake upstream, the health check's ended")
        config = yaml.safe_load(proxy.config_path.read_text())
        config["upstreams"]["main"]["imap"]["warm_pool"]["size"] = 1
        proxy.config_path.write_text(yaml.safe_dump(config))
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: fake.silent_ends == 3, "the old pool's two connections closed")
        wait_opened(proxy, "imap", 3)
        assert re.search(r"event=upstream_warm_pool_closed .*reason=reload.* closed=2",
                         proxy.logs()), proxy.logs()
        wait_for(lambda: fake.open == 1, "the new pool's one connection open")
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(30) == 0
        wait_for(lambda: fake.silent_ends == 4, "the pooled connection closed")
        assert re.search(r"event=upstream_warm_pool_closed .*reason=drain.* closed=1",
                         proxy.logs()), proxy.logs()
    finally:
        fake.close()


# --------------------------------------------------------------------------- connect_early


def early_counts(proxy, protocol: str) -> dict[str, float]:
    """mailproxy_upstream_connect_early_total{upstream="main", protocol} by result."""
    text = urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics",
                                  timeout=10).read().decode()
    pattern = (r'^mailproxy_upstream_connect_early_total\{protocol="%s",result="(\w+)",'
               r'upstream="main"\} (\S+)$' % protocol)
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def _early_config(dovecot, protocol: str) -> dict:
    config = relay_config(dovecot, listeners=(protocol,), allow_plaintext_auth=True)
    main = config["upstreams"]["main"]
    main[protocol]["connect_early"] = True
    main["forward_client_ip"] = True
    main["health_check_interval"] = "1h"
    return config


def test_connect_early_imap_and_pop3(proxy_factory, dovecot, user):
    """connect_early: the connection begun at accept carries the login (counted `used`), with
    the client's own address forwarded; a session that never logs in closes its own
    (`unused`)."""
    name, password = user
    dovecot.deliver(name, b"Subject: early\r\n\r\nHello.\r\n")
    proxy = proxy_factory(_early_config(dovecot, "imap"))
    client = IMAPFrom(proxy.port("imap"), "127.0.0.31")
    assert client.login(name, password)[0] == "OK"
    assert client.select("INBOX") == ("OK", [b"1"])
    client.logout()
    dovecot.wait_for_log(f"user=<{name}>, rip=127.0.0.31")
    idle = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    idle.logout()
    wait_for(lambda: early_counts(proxy, "imap").get("unused") == 1, "the unused one counted")
    assert early_counts(proxy, "imap") == {"used": 1, "stale": 0, "unused": 1, "lost": 0}
    proxy = proxy_factory(_early_config(dovecot, "pop3"))
    client = POP3From(proxy.port("pop3"), "127.0.0.32")
    client.user(name)
    assert client.pass_(password).startswith(b"+OK")
    assert b"Hello." in client.retr(1)[1]
    client.quit()
    dovecot.wait_for_log(f"user=<{name}>, rip=127.0.0.32")
    assert early_counts(proxy, "pop3") == {"used": 1, "stale": 0, "unused": 0, "lost": 0}


def test_connect_early_dropped_by_a_restart_is_retried_fresh(proxy_factory, dovecot_factory):
    """Dovecot restarted between the client's accept and its login: the connection begun at
    accept is dead; the login is answered on a fresh one."""
    server = dovecot_factory(ports=tuple(free_ports(2)))
    name, password = server.add_user()
    proxy = proxy_factory(_early_config(server, "imap"))
    client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    master = server.master_pid
    server.stop()
    _kill_group(master)
    server.start()
    assert client.login(name, password)[0] == "OK"
    client.logout()
    assert early_counts(proxy, "imap") == {"used": 1, "stale": 0, "unused": 0, "lost": 1}
