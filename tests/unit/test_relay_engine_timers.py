"""The relay engine's timer heap (proxy/relay/engine_timers.py): `at`, which the engine's loop
reads on every wake-up before it walks the heap (`at <= now`), says exactly when `due()` would do
something (an entry due, or the rebuild of a heap mostly made of dead entries)."""

from __future__ import annotations

import math

from proxy.relay.engine_timers import COMPACT_AFTER, TimerHeap


class FakeSession:
    """What TimerHeap reads of an EngineSession."""

    def __init__(self, at: float):
        self.at, self.done, self.timer_at = at, False, math.inf

    def due(self) -> float:
        return self.at


def test_dead_entries_below_half_the_heap_are_no_work_and_past_half_they_are_rebuilt():
    heap = TimerHeap()
    sessions = [FakeSession(1000.0 + i) for i in range(4 * COMPACT_AFTER)]
    for sess in sessions:
        assert heap.schedule(sess)
    for sess in sessions[:COMPACT_AFTER + 1]:   # a command now owed an answer: an earlier timer
        sess.at -= 500.0
        assert heap.schedule(sess)
    size = len(sessions) + COMPACT_AFTER + 1
    assert len(heap._heap) == size
    # more dead entries than COMPACT_AFTER, but not half the heap: due() would neither fire
    # nor rebuild, so the loop need not call it
    assert heap.at > 0.0
    assert list(heap.due(0.0)) == [] and len(heap._heap) == size
    assert heap.at <= 500.0 and heap.at > 499.0
    ended = sessions[COMPACT_AFTER + 1:][:size // 2]
    for sess in ended:
        sess.done = True
        heap.forget(sess)
    assert heap.at <= 0.0   # now mostly dead: the rebuild is due
    assert list(heap.due(0.0)) == []
    live = [s for s in sessions if not s.done]
    assert sorted(at for at, _, _ in heap._heap) == sorted(s.at for s in live)
    assert heap.at > 0.0
