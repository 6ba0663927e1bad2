"""Command metrics batched (proxy/command_tally.py): what `/metrics` exposes is exact at every
scrape, sample for sample what Counter.inc and Histogram.observe would give, with commands
completed from several threads and scrapes taken while they run; without scrapes the batch
stays bounded."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.command_tally import CommandTally
from proxy.metrics import COMMAND_BUCKETS, Metrics

# every bucket bound itself (observe() counts `amount <= bound`), just above, 0 and past the last
VALUES = [0.0, *COMMAND_BUCKETS, *(b * 1.000001 for b in COMMAND_BUCKETS), 1e9, 1e-7]


def families(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created")}   # (creation times differ by nature)


def direct_and_tallied() -> tuple[tuple[CollectorRegistry, Counter, Histogram],
                                  tuple[CollectorRegistry, Counter, Histogram, CommandTally]]:
    direct = CollectorRegistry()
    tallied = CollectorRegistry()
    tally = CommandTally()
    tallied.register(tally)   # first, as Metrics does
    made = []
    for registry in (direct, tallied):
        made.append((Counter("c_total", "c", ["command"], registry=registry),
                     Histogram("d_seconds", "d", ["command"], buckets=COMMAND_BUCKETS,
                               registry=registry)))
    (dc, dh), (tc, th) = made
    return (direct, dc, dh), (tallied, tc, th, tally)


def test_the_tally_exposes_what_inc_and_observe_would_at_every_scrape():
    (direct, dc, dh), (tallied, tc, th, tally) = direct_and_tallied()
    for round_ in range(3):   # scrape between batches: nothing counted twice or lost
        for n, value in enumerate(VALUES):
            name = ["NOOP", "FETCH"][n % 2]
            dc.labels(name).inc()
            dh.labels(name).observe(value)
            tally.completed(tc.labels(name), th.labels(name), value)
        got, want = families(tallied), families(direct)
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key[0] == "d_seconds_sum":
                assert got[key] == pytest.approx(value, rel=1e-12)
            else:   # counts and buckets: exact
                assert got[key] == value, (round_, key)
    assert families(tallied) == pytest.approx(families(direct), rel=1e-12)   # a scrape changes nothing


def test_a_full_batch_is_counted_by_the_thread_that_filled_it():
    """With no scrape, the recording thread adds a batch as soon as it is full: the list of
    recorded commands never holds more than BATCH, and the children have the counts."""
    (_, _, _), (_, tc, th, tally) = direct_and_tallied()
    tally.BATCH = 10
    for n in range(25):
        tally.completed(tc.labels("NOOP"), th.labels("NOOP"), 0.001)
        assert len(tally._done) == (n + 1) % 10
    assert tc.labels("NOOP")._value.get() == 20   # (read without a collect: no flush)
    assert th.labels("NOOP")._sum.get() == pytest.approx(0.02)
    tally.flush()
    assert tc.labels("NOOP")._value.get() == 25 and not tally._done


def test_commands_completed_on_other_threads_are_all_in_each_scrape():
    """The relay engine's thread completes commands while /metrics is scraped from trio's."""
    (_, _, _), (tallied, tc, th, tally) = direct_and_tallied()
    per_thread, threads = 20_000, 3
    done = [0] * threads
    go = threading.Event()

    def work(i: int) -> None:
        go.wait()
        for _ in range(per_thread):
            tally.completed(tc.labels("NOOP"), th.labels("NOOP"), 0.001)
            done[i] += 1

    tc.labels("NOOP"), th.labels("NOOP")   # (exposed from 0 on)
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    go.set()
    seen = 0.0
    while any(w.is_alive() for w in workers):
        finished_before = sum(done)
        value = tallied.get_sample_value("c_total", {"command": "NOOP"})
        assert value is not None and finished_before <= value <= per_thread * threads
        assert value >= seen   # monotonic across scrapes
        seen = value
    for w in workers:
        w.join()
    assert tallied.get_sample_value("c_total", {"command": "NOOP"}) == per_thread * threads
    assert tallied.get_sample_value("d_seconds_count", {"command": "NOOP"}) == per_thread * threads
    assert tallied.get_sample_value("d_seconds_bucket", {"command": "NOOP", "le": "0.001"}) \
        == per_thread * threads


def test_metrics_collects_the_tally_before_the_command_families():
    """Metrics registers its tally ahead of `mailproxy_commands_total` and the histograms, so
    the text a scrape returns already holds every command completed before it."""
    metrics = Metrics()
    counter = metrics.commands.labels("imap", "NOOP", "OK")
    histogram = metrics.command_duration.labels("imap", "NOOP")
    for _ in range(5):
        metrics.command_tally.completed(counter, histogram, 0.002)
    text = generate_latest(metrics.registry).decode()
    assert 'mailproxy_commands_total{command="NOOP",protocol="imap",status="OK"} 5.0' in text
    assert 'mailproxy_command_duration_seconds_count{command="NOOP",protocol="imap"} 5.0' in text
