"""Command metrics counted per thread on the relay's hot path, added to prometheus-client when
the registry is collected (a `/metrics` scrape, a worker's snapshot).

Theory of operation: a completed command (session.context.CommandMeter) used to cost a
Counter.inc and a Histogram.observe, each under prometheus-client's lock (about a quarter of
the relay core's Python per command). Now it costs the writing thread's own tally a dict add
and, for the duration, a bisect over the histogram's bucket bounds and two list adds. A tally
has one writer (its thread: trio's, or the relay engine's), only ever grows, and is never
locked by it. CommandTally is registered in the registry *before* the families it feeds, and
the registry collects in registration order: its `collect()` first adds to the prometheus
children what every tally gained since the last flush (under a lock only flushes take), then
yields nothing, so every command completed before the scrape is in the values it exposes.

A histogram child's buckets and sum are fed through its `_buckets` and `_sum` (prometheus-client
has no public way to add a batch of observations); tests/unit/test_command_tally.py compares
the result with `observe()` sample by sample, so a change of those internals fails there.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Iterable

__all__ = ["CommandTally"]


class _ThreadTally:
    """What one thread counted (cumulative), and what of it was flushed (the flush's own)."""

    __slots__ = ("counts", "observed", "flushed_counts", "flushed_observed")

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}   # counter child -> commands
        # histogram child -> (its bucket bounds, counts per bucket, [sum of observations])
        self.observed: dict[Any, tuple[list[float], list[int], list[float]]] = {}
        self.flushed_counts: dict[Any, int] = {}
        self.flushed_observed: dict[Any, tuple[list[int], float]] = {}


class CommandTally:
    """Register with `registry.register()` before the metrics it feeds (see above)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._tallies: list[_ThreadTally] = []
        self._lock = threading.Lock()

    def completed(self, counter: Any, histogram: Any, elapsed: float) -> None:
        """One command: `counter.inc()` and `histogram.observe(elapsed)`, at the next flush."""
        try:
            tally: _ThreadTally = self._local.tally
        except AttributeError:
            tally = self._local.tally = _ThreadTally()
            with self._lock:
                self._tallies.append(tally)
        counts = tally.counts
        counts[counter] = counts.get(counter, 0) + 1
        entry = tally.observed.get(histogram)
        if entry is None:
            bounds = list(histogram._upper_bounds)
            entry = tally.observed[histogram] = (bounds, [0] * len(bounds), [0.0])
        # the first bound >= elapsed: observe()'s bucket (`amount <= bound`)
        entry[1][bisect.bisect_left(entry[0], elapsed)] += 1
        entry[2][0] += elapsed

    def flush(self) -> None:
        """Add what every thread counted since the last flush to the prometheus children."""
        with self._lock:
            for tally in self._tallies:
                self._flush(tally)

    @staticmethod
    def _flush(tally: _ThreadTally) -> None:
        # list(...) copies in one C call: the writer may add keys meanwhile
        for counter, count in list(tally.counts.items()):
            done = tally.flushed_counts.get(counter, 0)
            if count > done:
                counter.inc(count - done)
                tally.flushed_counts[counter] = count
        for histogram, (_, buckets, total) in list(tally.observed.items()):
            now, now_sum = list(buckets), total[0]
            before, before_sum = tally.flushed_observed.get(histogram, (None, 0.0))
            for i, count in enumerate(now):
                added = count - (before[i] if before is not None else 0)
                if added:
                    histogram._buckets[i].inc(added)
            if now_sum != before_sum:
                histogram._sum.inc(now_sum - before_sum)
            tally.flushed_observed[histogram] = (now, now_sum)

    # -- a collector that yields nothing: collecting is the moment to flush ---------------
    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        self.flush()
        return ()
