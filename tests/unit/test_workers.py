"""The pieces of `workers: N` that need no process: what `auto` counts, how registries merge,
the control channel's framing."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from proxy import config as config_mod
from proxy.metrics import Metrics
from proxy.workers import aggregate, channel, count
from proxy.workers.supervisor import restart_delay


@pytest.mark.parametrize(("cpu_max", "quota"), [
    ("max 100000\n", None), ("200000 100000\n", 2.0), ("50000 100000", 0.5),
    ("", None), ("garbage", None), ("0 100000", None), ("x 100000", None),
])
def test_quota_cpus(cpu_max: str, quota: float | None) -> None:
    assert count.quota_cpus(cpu_max) == quota


@pytest.mark.parametrize(("affinity", "cpu_max", "workers"), [
    (8, "max 100000", 8),        # no limit: the affinity mask
    (8, "250000 100000", 3),     # a 2.5 CPU limit rounds up
    (2, "400000 100000", 2),     # the mask is smaller than the limit
    (4, "10000 100000", 1),      # below one CPU: still one worker
    (1, "", 1),                  # cgroup v1 or no file
])
def test_cpu_count(affinity: int, cpu_max: str, workers: int) -> None:
    assert count.cpu_count(affinity, cpu_max) == workers


def test_resolve() -> None:
    assert count.resolve(3) == 3
    assert count.resolve("auto") == count.cpu_count() >= 1


def worker_metrics(connections: int, active: int, upstream_up: int) -> Metrics:
    metrics = Metrics(CollectorRegistry())
    metrics.init_listener("imap", "imap", "none")
    metrics.connections.labels("imap", "imap", "none").inc(connections)
    metrics.connections_active.labels("imap", "imap", "none").set(active)
    metrics.upstream_up.labels("main", "imap").set(upstream_up)
    metrics.session_duration.labels("imap", "imap").observe(2.0)
    return metrics


def value(collector: aggregate.Aggregate, sample: str, **labels: str) -> float | None:
    for _, _, _, _, samples in collector.merged():
        for name, sample_labels, found in samples:
            if name == sample and sample_labels == labels:
                return float(found)
    return None


def test_merge_sums_counts_and_keeps_deployment_facts_once() -> None:
    own = Metrics(CollectorRegistry())
    collector = aggregate.Aggregate(own.registry)
    collector.update(0, aggregate.snapshot(worker_metrics(5, 2, 1).registry))
    collector.update(1, aggregate.snapshot(worker_metrics(7, 3, 1).registry))
    imap = {"listener": "imap", "protocol": "imap", "tls": "none"}
    assert value(collector, "mailproxy_connections_total", **imap) == 12
    assert value(collector, "mailproxy_connections_active", **imap) == 5
    assert value(collector, "mailproxy_upstream_up", upstream="main", protocol="imap") == 1
    assert value(collector, "mailproxy_session_duration_seconds_count",
                 listener="imap", protocol="imap") == 2
    assert value(collector, "mailproxy_session_duration_seconds_bucket",
                 listener="imap", protocol="imap", le="5.0") == 2
    assert value(collector, "mailproxy_build_info", version=own.build_info.collect()[0]
                 .samples[0].labels["version"], python=own.build_info.collect()[0]
                 .samples[0].labels["python"]) == 1


def test_a_retired_worker_keeps_its_totals_not_its_gauges() -> None:
    collector = aggregate.Aggregate(Metrics(CollectorRegistry()).registry)
    collector.update(0, aggregate.snapshot(worker_metrics(5, 2, 1).registry))
    collector.update(1, aggregate.snapshot(worker_metrics(7, 3, 1).registry))
    collector.retire(1)
    collector.update(1, aggregate.snapshot(worker_metrics(1, 1, 1).registry))  # its successor
    collector.retire(0)
    imap = {"listener": "imap", "protocol": "imap", "tls": "none"}
    assert value(collector, "mailproxy_connections_total", **imap) == 13
    assert value(collector, "mailproxy_connections_active", **imap) == 1
    collector.retire(1)
    assert value(collector, "mailproxy_connections_total", **imap) == 13
    assert value(collector, "mailproxy_connections_active", **imap) is None


def test_the_aggregate_is_served_as_prometheus_text() -> None:
    collector = aggregate.Aggregate(Metrics(CollectorRegistry()).registry)
    collector.update(0, aggregate.snapshot(worker_metrics(5, 2, 1).registry))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'mailproxy_connections_total{listener="imap",protocol="imap",tls="none"} 5.0' in text
    assert "# TYPE mailproxy_connections_total counter" in text
    assert text.count("# TYPE process_resident_memory_bytes gauge") == 1


async def test_channel_frames_both_ways() -> None:
    left, right = socket.socketpair()
    a, b = channel.Channel(left), channel.Channel(right)
    big = {"id": 1, "result": ["x" * 200_000, {"nested": [1.5, None]}]}
    await a.send(big)
    await a.send({"event": "ready"})
    assert await b.receive() == big
    assert await b.receive() == {"event": "ready"}
    await a.aclose()
    with pytest.raises(channel.ChannelClosed):
        await b.receive()
    with pytest.raises(channel.ChannelClosed):   # a Unix socket knows at once its peer is gone
        await b.send({"id": 2})


def test_a_frame_past_the_limit_closes_the_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel, "MAX_FRAME", 10)
    left, right = socket.socketpair()
    left.sendall(channel.encode({"too": "long for ten bytes"}))
    with pytest.raises(channel.ChannelClosed):
        channel.read_blocking(right)


def test_config_travels_whole() -> None:
    config = config_mod.loads("listeners: [{name: imap, protocol: imap, address: 127.0.0.1:1143}]\n"
                              "upstreams: {main: {host: 127.0.0.1, imap: {port: 143}}}\n"
                              "routes: [{match: '*', upstream: main}]\nworkers: 2\n")
    assert channel.unpickled(channel.pickled(config)) == config


def test_restart_delay_grows_while_a_worker_dies_young() -> None:
    delays, previous = [], None
    for lived in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 45.0, 1.0):
        previous = restart_delay(previous, lived)
        delays.append(previous)
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 0.0, 0.5]


async def test_a_garbled_frame_closes_the_channel() -> None:
    left, right = socket.socketpair()
    left.sendall(channel.encode({"id": 1})[:-3] + b"\x00\x00\x00\x02[]")   # cut short, then junk
    left.close()
    with pytest.raises(channel.ChannelClosed):
        await channel.Channel(right).receive()
