"""Command metrics recorded on the relay's hot path, added to prometheus-client in batches: when
the registry is collected (a `/metrics` scrape, a worker's snapshot) and every `BATCH` commands.

Theory of operation: a completed command (session.context.CommandMeter) used to cost a
Counter.inc and a Histogram.observe, each under prometheus-client's lock (about a quarter of
the relay core's Python per command). Now it costs one list append of (counter child,
histogram child, duration): the list is shared by every thread (an append is atomic), and the
counting (a dict add per command, a bisect over the histogram's bucket bounds) happens when a
batch is flushed, off the command's path: by whoever collects the registry, or by the thread
whose append filled the batch (so the list stays bounded without scrapes). A flush takes the
batch and adds it to the prometheus children under one lock, so a scrape waits for a flush in
progress. CommandTally is registered in the registry *before* the families it feeds, and the
registry collects in registration order: its `collect()` first flushes, then yields nothing,
so every command completed before the scrape is in the values it exposes.

A histogram child's buckets and sum are fed through its `_upper_bounds`, `_buckets` and `_sum`
(prometheus-client has no public way to add a batch of observations);
tests/unit/test_command_tally.py compares the result with `observe()` sample by sample, so a
change of those internals fails there.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Iterable

__all__ = ["CommandTally"]


class CommandTally:
    """Register with `registry.register()` before the metrics it feeds (see above)."""

    BATCH = 4096   # commands recorded before the recording thread flushes them itself

    def __init__(self) -> None:
        self._done: list[tuple[Any, Any, float]] = []   # (counter, histogram, duration)
        # (meter, label, status, duration) appended as they are by the relay engine's fused
        # step (relay/engine_imap.py): its children are looked up here, at the flush
        self.raw: list[tuple[Any, str, bytes, float]] = []
        self._lock = threading.Lock()

    def completed(self, counter: Any, histogram: Any, elapsed: float) -> None:
        """One command: `counter.inc()` and `histogram.observe(elapsed)`, at the next flush."""
        done = self._done
        done.append((counter, histogram, elapsed))
        if len(done) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Add every command recorded so far to the prometheus children."""
        with self._lock:
            done = self._done
            taken = len(done)
            batch = done[:taken]
            del done[:taken]   # (other threads only ever append behind it)
            raw = self.raw
            taken = len(raw)
            children: dict[tuple[Any, str, bytes], tuple[Any, Any]] = {}
            for meter, label, status, elapsed in raw[:taken]:
                key = (meter, label, status)
                pair = children.get(key)
                if pair is None:
                    pair = children[key] = meter.children(label, status)
                batch.append((pair[0], pair[1], elapsed))
            del raw[:taken]
            counts: dict[Any, int] = {}
            observed: dict[Any, tuple[list[float], list[int], list[float]]] = {}
            for counter, histogram, elapsed in batch:
                counts[counter] = counts.get(counter, 0) + 1
                entry = observed.get(histogram)
                if entry is None:
                    bounds = list(histogram._upper_bounds)
                    entry = observed[histogram] = (bounds, [0] * len(bounds), [0.0])
                # the first bound >= elapsed: observe()'s bucket (`amount <= bound`)
                entry[1][bisect.bisect_left(entry[0], elapsed)] += 1
                entry[2][0] += elapsed
            for counter, count in counts.items():
                counter.inc(count)
            for histogram, (_, buckets, total) in observed.items():
                for i, count in enumerate(buckets):
                    if count:
                        histogram._buckets[i].inc(count)
                histogram._sum.inc(total[0])

    # -- a collector that yields nothing: collecting is the moment to flush ---------------
    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        self.flush()
        return ()
