"""The process's cyclic garbage collector, set up for a long-running server (`gc:` in the
config).

Theory of operation: CPython 3.11 collects its oldest generation in one pass over every object
it tracks, holding the GIL, so the event loop (and every user's session on it) waits for the
whole pass. On the gateway, with 10,000-message mailboxes, those passes took 60-80 ms during
STORE, COPY and SORT (bench/gateway_fairness.py --sample). Two levers, measured there
(bench/README.md, "garbage collector"):

- `gc.freeze()` once start-up is done: what is alive then (modules, classes, functions, the
  config, TLS contexts, the store: about 65,000 objects in the gateway, 45% of what it tracks
  with a busy mailbox) lives as long as the process, so no collection traverses it again.
  (Worker processes are spawned, not forked, and each freezes its own.) The freeze comes after
  the listeners are bound and before the first accept: frozen objects are never collected as
  cycles, so a session frozen with them would stay for good, and with it the Runtime it
  holds (the start-up one, replaced by the first reload). Frozen objects no cycle holds are
  still freed when their last reference goes: a reload's old Runtime is freed once its last
  session ends.
- thresholds fitted to a server allocating many small, mostly short-lived objects: the young
  generation is collected every 20,000 net container allocations instead of 700, so fewer
  objects survive into the older generations only because a collection caught them in use;
  the whole heap is collected after 100 middle collections instead of 10 (and, as always,
  only once a quarter more objects have become long-lived).

A reload (SIGHUP) applies new thresholds; the freeze happens once, at start-up.
"""

from __future__ import annotations

import gc

from .config.operations import Collector

__all__ = ["set_up"]


def set_up(collector: Collector, *, startup: bool) -> None:
    """Apply `collector`; with `startup`, first freeze what start-up left alive."""
    if startup and collector.freeze_after_startup:
        gc.collect()   # start-up's garbage is collected, not frozen with the rest
        gc.freeze()
    gc.set_threshold(*collector.thresholds)
