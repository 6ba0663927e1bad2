"""One `/metrics` for every worker: the supervisor merges the workers' registries at scrape time.

Theory of operation: each worker keeps its own in-process registry (proxy/metrics.py, unchanged:
no shared files, nothing extra on the hot path). When `/metrics` is asked for, the supervisor asks
every worker for a snapshot of its registry (`snapshot()`, plain JSON over the control channel)
and `Aggregate.collect()` merges them with the supervisor's own registry, sample by sample (same
name and labels): counters, histograms and summaries add up; gauges add up (open connections,
sessions, memory) unless they state one fact about the whole deployment, which is the same in
every process (`GAUGE_MAX`: an upstream's health, a certificate's expiry, build info, draining,
the store's size), or a start time (`GAUGE_MIN`).

A worker that exits leaves its counts behind: the counter, histogram and summary samples of its
last snapshot are added to `retired`, so every total stays monotonic across a worker's restart (a
Prometheus `rate()` sees no reset). Its gauges go with it. A worker that drains sends a final
snapshot as it exits; one that crashes loses what it counted since its last snapshot (the last
scrape, or the supervisor's periodic collection, COLLECT_INTERVAL).

Why not prometheus_client's multiprocess mode: it keeps every value in per-process mmap files
written on every increment (a lock and a file write on the relay's hot path), cannot serve
callback gauges (`set_function`: draining, the gateway's sync ages) or the process collector,
and is chosen by an environment variable at import time for the whole interpreter, where this
project gives each `Metrics` its own registry (tests, one process with `workers: 1`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Metric

COLLECT_INTERVAL = 15.0   # seconds between the supervisor's own collections (crash loss bound)
MONOTONIC = frozenset({"counter", "histogram", "summary"})
GAUGE_MAX = frozenset({
    "mailproxy_upstream_up", "mailproxy_certificate_expiry_timestamp_seconds",
    "mailproxy_build_info", "mailproxy_draining", "mailproxy_gateway_store_bytes",
    "process_max_fds", "python_info",
})
GAUGE_MIN = frozenset({"process_start_time_seconds"})

# [[family name, type, help, unit, [[sample name, labels, value], ...]], ...]
Snapshot = list[list[Any]]
_Key = tuple[str, tuple[tuple[str, str], ...]]


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Every family of `registry` as JSON-able lists."""
    return [[family.name, family.type, family.documentation, family.unit,
             [[s.name, s.labels, s.value] for s in family.samples]]
            for family in registry.collect()]


def _combine(name: str, kind: str) -> Callable[[float, float], float]:
    if kind == "gauge" and name in GAUGE_MAX:
        return max
    if kind == "gauge" and name in GAUGE_MIN:
        return min
    return lambda a, b: a + b


@dataclass
class _Family:
    kind: str
    documentation: str
    unit: str
    values: dict[_Key, float] = field(default_factory=dict)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """One snapshot: each family once, each sample combined across `snapshots`."""
    families: dict[str, _Family] = {}
    for snap in snapshots:
        for name, kind, documentation, unit, samples in snap:
            family = families.setdefault(name, _Family(kind, documentation, unit))
            combine = _combine(name, kind)
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                old = family.values.get(key)
                family.values[key] = value if old is None else combine(old, value)
    return [[name, f.kind, f.documentation, f.unit,
             [[sample, dict(labels), value] for (sample, labels), value in f.values.items()]]
            for name, f in families.items()]


def monotonic_part(snap: Snapshot) -> Snapshot:
    """The families of `snap` whose totals only grow (kept after a worker exits)."""
    return [family for family in snap if family[1] in MONOTONIC]


class Aggregate:
    """A collector (register it on the registry `/metrics` serves) merging the supervisor's own
    registry, the live workers' last snapshots and what exited workers left behind."""

    def __init__(self, own: CollectorRegistry):
        self.own = own
        self.live: dict[int, Snapshot] = {}   # worker index -> its last snapshot
        self.retired: Snapshot = []

    def update(self, worker: int, snap: Snapshot) -> None:
        self.live[worker] = snap

    def retire(self, worker: int) -> None:
        """Worker `worker` exited: keep its totals, forget its gauges."""
        snap = self.live.pop(worker, None)
        if snap is not None:
            self.retired = merge([self.retired, monotonic_part(snap)])

    def merged(self) -> Snapshot:
        return merge([snapshot(self.own), self.retired, *self.live.values()])

    def collect(self) -> Iterable[Metric]:
        for name, kind, documentation, unit, samples in self.merged():
            metric = Metric(name, documentation, kind, unit)
            for sample, labels, value in samples:
                metric.add_sample(sample, labels, value)
            yield metric
