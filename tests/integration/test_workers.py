"""`workers: 2` against real processes, a real Dovecot and real clients: sessions spread over both
workers, `/metrics` is their sum, a killed worker is restarted while the other keeps serving,
SIGTERM drains both, SIGHUP and the admin `reload` reload both, `who`/`kick` reach both."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
import yaml

from support.dovecot import free_ports
from support.polling import wait_for
from support.proxyproc import relay_config
from tests.gateway_imapd.test_replicas import Idle

HOST = "127.0.0.1"
MAX_SESSIONS = 64   # opened until both workers hold one: a bound only a broken build reaches


def scrape(proxy) -> dict[str, float]:
    """`/metrics` as {'name{labels}': value} (labels as the exposition writes them)."""
    with urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def readyz(proxy) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/readyz", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def verb(proxy, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args, "--config",
                           str(proxy.config_path)], capture_output=True, text=True, timeout=60)


def who(proxy) -> list[dict[str, str]]:
    result = verb(proxy, "who")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    return [dict(zip(header.split(), row.split(), strict=True)) for row in rows]


def worker_pids(proxy) -> dict[int, int]:
    """The current pid of each worker slot, from the supervisor's `worker_started` lines."""
    pids = {}
    for match in re.finditer(r"event=worker_started worker=(\d+) pid=(\d+)", proxy.logs()):
        pids[int(match[1])] = int(match[2])
    return pids


def workers_config(dovecot, tmp_path, **extra):
    (tmp_path / "admin.token").write_text("s3cret\n")
    (port,) = free_ports(1)
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["workers"] = 2
    config["admin"] = {"address": f"{HOST}:{port}", "token": {"file": str(tmp_path / "admin.token")}}
    config.update(extra)
    return config


def login(proxy, user) -> imaplib.IMAP4:
    client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    client.login(*user)
    return client


def sessions_on_both(proxy, user) -> list[imaplib.IMAP4]:
    """Logged-in sessions, opened until `who` shows both workers holding one."""
    clients = []
    while len(clients) < MAX_SESSIONS:
        clients.append(login(proxy, user))
        if {row["worker"] for row in who(proxy)} == {"0", "1"}:
            return clients
    raise AssertionError(f"{MAX_SESSIONS} sessions all went to one worker: {who(proxy)}")


def test_sessions_spread_and_metrics_sum(proxy_factory, dovecot, user, tmp_path):
    proxy = proxy_factory(workers_config(dovecot, tmp_path), ready_timeout=60)
    assert readyz(proxy) == (200, "ready\n")
    clients = sessions_on_both(proxy, user)
    rows = who(proxy)
    assert len(rows) == len(clients)
    per_worker = {w: sum(row["worker"] == w for row in rows) for w in ("0", "1")}
    for client in clients:
        assert client.select("INBOX")[0] == "OK"
    # the relay forwards a reply before it counts it: wait until every SELECT is counted
    select_ok = 'mailproxy_commands_total{command="SELECT",protocol="imap",status="OK"}'
    metrics = wait_for(lambda: (m := scrape(proxy)).get(select_ok) == len(clients) and m,
                       "every SELECT counted")
    labels = '{listener="imap",protocol="imap",tls="none"}'
    assert metrics[f"mailproxy_connections_total{labels}"] == len(clients)
    assert metrics[f"mailproxy_connections_active{labels}"] == len(clients)
    assert metrics["mailproxy_workers"] == 2
    assert metrics["mailproxy_workers_ready"] == 2
    assert metrics["mailproxy_build_info" + next(k[len("mailproxy_build_info"):] for k in metrics
                                                 if k.startswith("mailproxy_build_info{"))] == 1
    assert per_worker["0"] + per_worker["1"] == len(clients)
    for client in clients:
        client.logout()
    wait_for(lambda: scrape(proxy)[f"mailproxy_connections_active{labels}"] == 0,
             "every session closed in the aggregate")


class SourceIMAP(imaplib.IMAP4):
    """imaplib from a chosen loopback source address, so `who` tells which worker has it."""

    def __init__(self, port: int, source: str):
        self.source = source
        super().__init__(HOST, port, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))


def spread_by_source(proxy, user) -> dict[str, list[imaplib.IMAP4]]:
    """Logged-in sessions, each from its own source address, until both workers hold one;
    returned by worker ("0", "1")."""
    by_source = {}
    for i in range(MAX_SESSIONS):
        source = f"127.0.0.{10 + i}"
        client = SourceIMAP(proxy.port("imap"), source)
        client.login(*user)
        by_source[source] = client
        where = {row["client"]: row["worker"] for row in who(proxy)}
        if set(where.values()) == {"0", "1"}:
            return {w: [c for s, c in by_source.items() if where[s] == w] for w in ("0", "1")}
    raise AssertionError(f"{MAX_SESSIONS} sessions all went to one worker: {who(proxy)}")


def test_killed_worker_is_restarted_while_the_other_serves(proxy_factory, dovecot, user,
                                                          tmp_path):
    proxy = proxy_factory(workers_config(dovecot, tmp_path), ready_timeout=60)
    proxy.allow_tracebacks = False
    on = spread_by_source(proxy, user)
    opened = len(on["0"]) + len(on["1"])
    labels = '{listener="imap",protocol="imap",tls="none"}'
    assert scrape(proxy)[f"mailproxy_connections_total{labels}"] == opened
    victim = worker_pids(proxy)[1]
    os.kill(victim, signal.SIGKILL)
    for client in on["1"]:   # its sessions end with it
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            client.noop()
    for client in on["0"]:   # the other worker's sessions go on
        assert client.select("INBOX")[0] == "OK"
    fresh = login(proxy, user)   # and new ones are accepted, restart or not
    assert fresh.noop()[0] == "OK"
    wait_for(lambda: worker_pids(proxy)[1] != victim, "worker 1 started again", timeout=60)
    wait_for(lambda: scrape(proxy)["mailproxy_workers_ready"] == 2, "both workers ready",
             timeout=60)
    assert re.search(r"ERROR event=worker_exited worker=1 status=-9 restart_in=0.0\n", proxy.logs())
    metrics = scrape(proxy)
    assert metrics["mailproxy_worker_restarts_total"] == 1
    # the killed worker's counts (collected by the scrape above) are kept: no counter reset
    assert metrics[f"mailproxy_connections_total{labels}"] == opened + 1
    assert metrics[f"mailproxy_connections_active{labels}"] == len(on["0"]) + 1
    assert readyz(proxy) == (200, "ready\n")


def test_sigterm_drains_every_worker(proxy_factory, dovecot, user, tmp_path):
    proxy = proxy_factory(workers_config(dovecot, tmp_path, shutdown_timeout="30s"),
                          ready_timeout=60)
    on = spread_by_source(proxy, user)
    busy = on["1"][0]   # a command in flight on worker 1: APPEND waiting for its literal
    busy.send(b"a1 APPEND INBOX {7}\r\n")
    assert busy.readline().startswith(b"+")
    pids = worker_pids(proxy)
    proxy.send_signal(signal.SIGTERM)
    for client in on["0"] + on["1"][1:]:   # idle sessions of both workers: BYE at once
        assert client.readline() == b"* BYE Server shutting down.\r\n"
    assert readyz(proxy) == (503, "draining\n")

    def refused() -> bool:
        try:
            socket.create_connection((HOST, proxy.port("imap")), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, "new connections refused while draining")
    busy.send(b"Hello\r\n\r\n")   # the APPEND completes, then BYE
    assert busy.readline().startswith(b"a1 OK")
    assert busy.readline() == b"* BYE Server shutting down.\r\n"
    assert proxy.wait(timeout=60) == 0
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the supervisor"
    assert len(re.findall(r"event=worker_exited worker=\d status=0", proxy.logs())) == 2


def test_sighup_and_admin_reload_reach_every_worker(proxy_factory, dovecot, dovecot_factory,
                                                   user, tmp_path):
    second = dovecot_factory()
    moved = second.add_user(name="moved@example.net")
    proxy = proxy_factory(workers_config(dovecot, tmp_path), ready_timeout=60)
    kept = spread_by_source(proxy, user)
    config = yaml.safe_load(proxy.config_path.read_text())
    config["upstreams"]["second"] = {"host": HOST, "imap": {"port": second.imap_port}}
    config["routes"].insert(0, {"match": "*@example.net", "upstream": "second"})
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded routes=2 upstreams=2 workers=2" in proxy.logs(),
             "the supervisor's reloaded line")
    for w in ("0", "1"):
        assert re.search(rf"event=reloaded worker={w} routes=2 upstreams=2", proxy.logs())
    moved_on = spread_by_source(proxy, moved)   # logins on both workers reach the new upstream
    assert all(client.select("INBOX")[0] == "OK" for client in moved_on["0"] + moved_on["1"])
    assert all(client.select("INBOX")[0] == "OK" for client in kept["0"] + kept["1"])

    reloaded = verb(proxy, "reload")
    assert (reloaded.returncode, reloaded.stdout) == (0, "reloaded\n")
    assert len(re.findall(r"event=reloaded worker=1 ", proxy.logs())) == 2
    config["workers"] = 3
    proxy.config_path.write_text(yaml.safe_dump(config))
    refused = verb(proxy, "reload")
    assert (refused.returncode, refused.stderr) == (1, "reload refused: workers needs a restart\n")
    assert len(re.findall(r"event=reloaded worker=1 ", proxy.logs())) == 2


def test_who_and_kick_reach_every_worker(proxy_factory, dovecot, user, tmp_path):
    proxy = proxy_factory(workers_config(dovecot, tmp_path), ready_timeout=60)
    other = dovecot.add_user()
    on = spread_by_source(proxy, user)
    bystander = login(proxy, other)
    rows = who(proxy)
    assert sorted(row["user"] for row in rows) == sorted([user[0]] * (len(on["0"]) + len(on["1"]))
                                                         + [other[0]])
    kicked = verb(proxy, "kick", user[0])
    assert (kicked.returncode, kicked.stdout) == (
        0, f"kicked {len(on['0']) + len(on['1'])} session(s) of user {user[0]}\n")
    for client in on["0"] + on["1"]:
        assert client.readline() == b"* BYE Disconnected by the administrator.\r\n"
    assert bystander.noop()[0] == "OK"
    assert [row["user"] for row in who(proxy)] == [other[0]]


def gateway_workers_sessions(proxy_factory, dovecot, pg_dsn, tmp_path,
                             poll_interval: str) -> dict[str, list[imaplib.IMAP4]]:
    """`workers: 2` serving a gateway listener on PostgreSQL, a user with 3 messages, and that
    user's sessions on both workers (`spread_by_source`), each with INBOX selected."""
    name, password = dovecot.add_user()
    for n in range(3):
        dovecot.deliver(name, b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    config = workers_config(dovecot, tmp_path)
    config["listeners"] = [{"name": "imap", "protocol": "imap", "mode": "gateway",
                            "address": "127.0.0.1:0", "allow_plaintext_auth": True}]
    config["gateway"] = {"store": pg_dsn, "poll_interval": poll_interval}
    proxy = proxy_factory(config, ready_timeout=60)
    on = spread_by_source(proxy, (name, password))
    for client in on["0"] + on["1"]:
        assert client.select("INBOX") == ("OK", [b"3"])
    return on


def test_gateway_workers_share_a_postgresql_store(proxy_factory, dovecot, pg_dsn, tmp_path):
    """What one worker's session changes reaches the sessions of the other worker (the store's
    change feed, as between replicas)."""
    on = gateway_workers_sessions(proxy_factory, dovecot, pg_dsn, tmp_path, "1s")
    assert on["0"][0].store("2", "+FLAGS.SILENT", "(\\Flagged)")[0] == "OK"

    def flagged(client: imaplib.IMAP4) -> bool:
        client.noop()
        return any(b"\\Flagged" in line for line in client.untagged_responses.get("FETCH", []))

    for client in on["1"]:   # the other worker's sessions hear of it
        wait_for(lambda c=client: flagged(c), "the flag set through worker 0 seen on worker 1")


def test_gateway_workers_push_each_others_changes_to_idle_sessions(proxy_factory, dovecot,
                                                                   pg_dsn, tmp_path):
    """`workers: 2`, a gateway listener on PostgreSQL: both workers serve the same mailbox and
    a session IDLE on either is told at once (RFC 2177) of a flag change, an APPEND and an
    EXPUNGE made through the other worker (its change feed), without a NOOP."""
    on = gateway_workers_sessions(proxy_factory, dovecot, pg_dsn, tmp_path, "600s")
    zero, one = on["0"][0], on["1"][0]

    idle = Idle(one)      # worker 1 is told what worker 0 does
    assert zero.store("2", "+FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
    assert re.search(rb"^\* 2 FETCH \(.*FLAGS \(\\Flagged\)", idle.until(rb"^\* 2 FETCH"))
    idle.done()
    idle = Idle(zero)     # and worker 0 what worker 1 does
    assert one.append("INBOX", None, None, b"Subject: m3\r\n\r\nbody 3\r\n")[0] == "OK"
    assert idle.until(rb"EXISTS") == b"* 4 EXISTS"
    idle.done()
    idle = Idle(one)
    assert zero.store("1", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
    assert zero.expunge() == ("OK", [b"1"])
    assert idle.until(rb"EXPUNGE") == b"* 1 EXPUNGE"
    idle.done()
    for client in (zero, one):
        assert client.uid("SEARCH", "ALL")[1] == [b"2 3 4"]
        client.logout()
