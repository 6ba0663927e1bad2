"""`warm_pool:` (config/upstreams.py) and the pool itself (session/warm_pool.py), without trio:
what `take` hands out (only a quiet, young connection of the routed upstream's one host and
port), what it closes (EOF, unexpected bytes, age), close(), and takes from several threads.
`connect_early:`: where it is refused, and session/connect_early.py's start and take."""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from proxy import config as config_mod
from proxy.config import WarmPool as WarmPoolSettings
from proxy.metrics import Metrics
from proxy.session import connect_early
from proxy.session.warm_pool import WARM_EVENTS, WarmConnection, WarmPools

BASE = """\
listeners:
  - {name: imap, protocol: imap, address: 127.0.0.1:1143}
  - {name: pop3, protocol: pop3, address: 127.0.0.1:1110}
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143%s}, pop3: {port: 110}}
routes:
  - {match: "*", upstream: main}
"""


def test_off_by_default_and_defaults() -> None:
    main = config_mod.loads(BASE % "").upstreams["main"]
    assert main.imap is not None and main.imap.warm_pool is None
    imap = config_mod.loads(BASE % ", warm_pool: {}").upstreams["main"].imap
    assert imap is not None and imap.warm_pool == WarmPoolSettings(size=2, max_age=20.0)


@pytest.mark.parametrize("extra, error", [
    (", warm_pool: {size: 0}", "line 5: upstreams.main.imap.warm_pool.size: must be 1 to 64"),
    (", warm_pool: {size: 65}", "line 5: upstreams.main.imap.warm_pool.size: must be 1 to 64"),
    (", warm_pool: {max_age: 0s}",
     "line 5: upstreams.main.imap.warm_pool.max_age: must be above 0 and at most 300s"),
    (", tls: implicit, warm_pool: {}",
     "line 5: upstreams.main.imap.warm_pool: warm connections are plaintext only: this "
     "service has tls: implicit (remove warm_pool, or connect without TLS)"),
    (", tls: starttls, warm_pool: {}",
     "line 5: upstreams.main.imap.warm_pool: warm connections are plaintext only: this "
     "service has tls: starttls (remove warm_pool, or connect without TLS)"),
])
def test_invalid_settings_are_refused_with_their_path(extra: str, error: str) -> None:
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE % extra)
    assert caught.value.errors == [error]


def test_a_pool_of_hosts_is_refused() -> None:
    text = (BASE % ", warm_pool: {}").replace("host: 127.0.0.1,", "hosts: [127.0.0.1, 127.0.0.2],")
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(text)
    assert caught.value.errors == [
        "line 5: upstreams.main.imap.warm_pool: warm connections need one host: this upstream "
        "has hosts: (remove warm_pool, or give one host)"]


def _pools(max_age: str = "20s", size: int = 2) -> tuple[WarmPools, Metrics, config_mod.Config]:
    config = config_mod.loads(BASE % f", warm_pool: {{size: {size}, max_age: {max_age}}}")
    metrics = Metrics(CollectorRegistry())
    return WarmPools.of(config, metrics), metrics, config


def _counts(metrics: Metrics) -> dict[str, float]:
    return {e: metrics.upstream_warm.labels("main", "imap", e)._value.get() for e in WARM_EVENTS}


def _warm(born: float | None = None) -> tuple[WarmConnection, socket.socket]:
    """A pooled end of a socket pair, and the 'upstream' end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return WarmConnection(ours, (b"IMAP4rev1",), born=time.monotonic() if born is None
                          else born), theirs


def test_only_services_with_warm_pool_get_a_pool() -> None:
    pools, metrics, config = _pools()
    assert [(p.protocol, p.name, p.host, p.port, p.size) for p in pools] == [
        ("imap", "main", "127.0.0.1", 143, 2)]
    assert pools.take("pop3", "main", config.upstreams["main"]) is None
    assert _counts(metrics) == dict.fromkeys(WARM_EVENTS, 0.0)   # series exist at 0


def test_take_hands_out_quiet_connections_oldest_first() -> None:
    pools, metrics, config = _pools()
    main = config.upstreams["main"]
    (pool,) = pools
    first, up1 = _warm()
    second, up2 = _warm()
    pool.put(first)
    pool.put(second)
    assert pool.missing() == 0
    pool.put(_warm()[0])   # full: closed, not kept
    assert pools.take("imap", "main", main) is first
    assert pools.take("imap", "main", main) is second
    assert pools.take("imap", "main", main) is None
    assert _counts(metrics) == {**dict.fromkeys(WARM_EVENTS, 0.0), "opened": 2.0,
                                     "hit": 2.0, "miss": 1.0}
    first.sock.close(), second.sock.close(), up1.close(), up2.close()


def test_another_host_or_port_under_the_same_name_gets_nothing() -> None:
    """A lookup may route to another host with the upstream's settings (routing/chain.py)."""
    pools, _, config = _pools()
    main = config.upstreams["main"]
    (pool,) = pools
    conn, upstream_end = _warm()
    pool.put(conn)
    assert pools.take("imap", "main", replace(main, host="10.0.0.9")) is None
    assert main.imap is not None
    assert pools.take("imap", "main", replace(main, imap=replace(main.imap, port=1143))) is None
    assert pools.take("imap", "other", main) is None
    assert pools.take("imap", "main", main) is conn
    conn.sock.close(), upstream_end.close()


@pytest.mark.parametrize("upstream_does, event", [
    ("close", "stale"), ("bye", "stale"), ("nothing, for too long", "expired")])
def test_unusable_connections_are_closed_never_handed_out(upstream_does: str,
                                                          event: str) -> None:
    # 60 s: a young connection stays young through any stall of this process (at 5 s, a stall
    # that long between the two lines below made "stale" read "expired")
    pools, metrics, config = _pools(max_age="60s")
    (pool,) = pools
    conn, upstream_end = _warm(born=time.monotonic() - (61 if event == "expired" else 0))
    pool.put(conn)
    if upstream_does == "close":
        upstream_end.close()
    elif upstream_does == "bye":
        upstream_end.sendall(b"* BYE Disconnected for inactivity.\r\n")
    assert pools.take("imap", "main", config.upstreams["main"]) is None
    assert conn.sock.fileno() == -1   # closed by the pool
    counts = _counts(metrics)
    assert (counts[event], counts["miss"], counts["hit"]) == (1.0, 1.0, 0.0)
    upstream_end.close()


def test_expire_in_closes_old_ones_and_says_when_the_next_is_due() -> None:
    pools, metrics, _ = _pools(max_age="60s")
    (pool,) = pools
    old, end1 = _warm(born=time.monotonic() - 61)
    young, end2 = _warm(born=time.monotonic() - 4)
    pool.put(old)
    pool.put(young)
    # the pool reads its clock between `before` and `after`: exact however long this process
    # is stopped anywhere here (a fixed window, "5 < due <= 6", failed after a stall of 1 s)
    before = time.monotonic()
    due = pool.expire_in()
    after = time.monotonic()
    assert young.born + 60 - after <= due <= young.born + 60 - before
    assert old.sock.fileno() == -1 and young.sock.fileno() != -1
    assert _counts(metrics)["expired"] == 1.0 and pool.missing() == 1
    pool.close()
    assert pool.expire_in() == float("inf")
    end1.close(), end2.close()


def test_close_closes_every_connection_and_later_takes_get_none() -> None:
    pools, _, config = _pools()
    (pool,) = pools
    woken = []
    pool.wake = lambda: woken.append(True)
    conns = [_warm() for _ in range(2)]
    for conn, _ in conns:
        pool.put(conn)
    pools.close("drain")
    assert pools.closed and pool.missing() == 0 and woken == [True]
    assert all(conn.sock.fileno() == -1 for conn, _ in conns)
    late, end = _warm()
    pool.put(late)   # a fill that finished after the close
    assert late.sock.fileno() == -1
    assert pools.take("imap", "main", config.upstreams["main"]) is None
    for _, upstream_end in conns:
        upstream_end.close()
    end.close()


def test_takes_from_many_threads_hand_each_connection_out_once() -> None:
    pools, metrics, config = _pools(size=64)
    (pool,) = pools
    pairs = [_warm() for _ in range(64)]
    for conn, _ in pairs:
        pool.put(conn)
    main = config.upstreams["main"]
    taken: list[WarmConnection | None] = []
    lock = threading.Lock()

    def taker() -> None:
        for _ in range(10):
            got = pools.take("imap", "main", main)
            with lock:
                taken.append(got)

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [t for t in taken if t is not None]
    assert len(handed) == 64 and len({id(t) for t in handed}) == 64
    counts = _counts(metrics)
    assert (counts["hit"], counts["miss"]) == (64.0, 16.0)
    for conn, upstream_end in pairs:
        conn.sock.close()
        upstream_end.close()


# --------------------------------------------------------------------------- connect_early

ONE_ROUTE = BASE.replace("imap: {port: 143%s}", "imap: {port: 143, connect_early: true}%s")


def test_connect_early_targets_the_one_routed_upstream() -> None:
    config = config_mod.loads(ONE_ROUTE % "")
    targets = connect_early.early_targets(config)
    assert list(targets) == ["imap"]
    target = targets["imap"]
    assert (target.name, target.port, target.family) == ("main", 143, socket.AF_INET)
    assert connect_early.early_targets(config_mod.loads(BASE % "")) == {}


@pytest.mark.parametrize("change, error", [
    (lambda t: t + "  - {match: 'x@y', upstream: other}\n",
     "upstreams.main.imap.connect_early: connecting at accept needs every login routed here: "
     "no lookups, and every route to this upstream"),
    (lambda t: t + "lookups:\n  - http: {url: 'http://127.0.0.1:9/'}\n",
     "upstreams.main.imap.connect_early: connecting at accept needs every login routed here: "
     "no lookups, and every route to this upstream"),
    (lambda t: t.replace("host: 127.0.0.1,", "host: mail.example,"),
     "upstreams.main.imap.connect_early: connecting at accept needs an IP address as host (no "
     "lookup of a name at every accept)"),
    (lambda t: t.replace("host: 127.0.0.1,", "hosts: [127.0.0.1, 127.0.0.2],"),
     "upstreams.main.imap.connect_early: connecting at accept needs one host: this upstream "
     "has hosts:"),
    (lambda t: t.replace("connect_early: true", "connect_early: true, warm_pool: {}"),
     "upstreams.main.imap.connect_early: give connect_early or warm_pool, not both"),
])
def test_connect_early_where_the_route_could_vary_is_refused(change, error) -> None:
    other = "  other: {host: 127.0.0.2, imap: {port: 143}, pop3: {port: 110}}\n"
    text = change(ONE_ROUTE % "").replace("upstreams:\n", "upstreams:\n" + other)
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(text)
    assert [e.split(": ", 1)[1] for e in caught.value.errors] == [error]


def test_start_and_take() -> None:
    """A connect begun without waiting; taken for its upstream; refused (and closed) for
    another name, past EARLY_MAX_AGE, or when its connect failed."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    config = config_mod.loads(ONE_ROUTE.replace("port: 143,", f"port: {port},") % "")
    target = connect_early.early_targets(config)["imap"]
    early = connect_early.start(target)
    assert early is not None
    assert connect_early.take(early, "other") is None and early.sock.fileno() == -1
    early = connect_early.start(target)
    assert early is not None
    assert connect_early.take(early, "main") is early.sock
    early.sock.close()
    old = connect_early.start(target)
    assert old is not None
    old = replace(old, started=old.started - connect_early.EARLY_MAX_AGE)
    assert connect_early.take(old, "main") is None and old.sock.fileno() == -1
    server.close()
    refused = connect_early.start(target)   # nobody listens any more
    if refused is not None:   # (None: refused at once)
        assert select.select([], [refused.sock], [], 10)[1], "the connect did not complete"
        assert connect_early.take(refused, "main") is None and refused.sock.fileno() == -1
