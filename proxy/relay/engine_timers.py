"""The relay engine's timers (engine.py): one heap entry per session, at its nearest timer.

Theory of operation: a session's timers (idle, idle_command, upstream_response) are not entries
of their own. Activity only moves the session's timestamps; the heap holds one entry per session
at the time its nearest timer could fire (`EngineSession.due()`), and `timer_at` on the session
names its live entry. When an entry comes due the session looks at its timers again and asks for
a new entry (`schedule`); a timer that moved earlier (e.g. a command now owed an answer) pushes
a new entry at once, superseding the old one. Entries of ended sessions and superseded ones are
skipped when they come up, and the heap is rebuilt when they outnumber the live ones.

`at` is kept current by every change (the earliest entry's time, or -inf while a rebuild is
due), so the engine's loop reads one attribute per wake-up for its poll's deadline and for
whether `due()` has work.

Touched only under the engine's lock (by either thread), like the sessions.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .engine_session import EngineSession

__all__ = ["TimerHeap"]

COMPACT_AFTER = 64   # dead entries tolerated before a rebuild (and only past half the heap)


class TimerHeap:
    """(time, sequence, session) entries; at most one live entry per session."""

    __slots__ = ("_heap", "_seq", "_dead", "at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, EngineSession]] = []
        self._seq = itertools.count()
        self._dead = 0   # entries of ended sessions, or superseded
        # when `due()` has work: the earliest entry's time (math.inf for none), -inf while a
        # rebuild is due (`_refresh` after every change)
        self.at = math.inf

    def _compact_due(self) -> bool:
        return self._dead > COMPACT_AFTER and self._dead > len(self._heap) // 2

    def _refresh(self) -> None:
        heap = self._heap
        self.at = -math.inf if self._compact_due() else heap[0][0] if heap else math.inf

    def schedule(self, sess: EngineSession) -> bool:
        """An entry at the session's nearest timer, if that is earlier than its live entry;
        True when one was pushed."""
        at = sess.due()
        if at >= sess.timer_at:
            return False
        if sess.timer_at != math.inf:
            self._dead += 1
        sess.timer_at = at
        heapq.heappush(self._heap, (at, next(self._seq), sess))
        self._refresh()
        return True

    def forget(self, sess: EngineSession) -> None:
        """The session ended: its live entry (if any) is dead."""
        if sess.timer_at != math.inf:
            self._dead += 1
            self._refresh()

    def due(self, now: float) -> Iterator[EngineSession]:
        """The sessions whose live entry is at or before `now`, each with no live entry left
        (the caller runs its timer, which may schedule it again)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, sess = heapq.heappop(heap)
            if sess.done or at != sess.timer_at:
                self._dead -= 1
                continue
            sess.timer_at = math.inf
            yield sess
        if self._compact_due():
            self._heap = [e for e in heap if not e[2].done and e[0] == e[2].timer_at]
            heapq.heapify(self._heap)
            self._dead = 0
        self._refresh()
