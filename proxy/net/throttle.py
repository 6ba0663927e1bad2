"""Authentication-failure throttling per client IP and per user name.

Theory of operation: each failed login adds a failure to two records, one for the client IP and
one for the user name, each keeping the failures of the last `window`. The reply to a failure is
delayed by `base_delay * 2**(n-1)` (capped at `max_delay`), n being the larger of the two counts,
which slows guessing without affecting anyone else. Once either count reaches `block_after`, that
IP or user is refused outright (before any upstream is asked) until `block_for` has passed. A
success clears the user's record, not the IP's. Records are pruned as they expire and their
number is capped, so a flood of distinct names cannot grow memory without bound. The clock is
passed in, so tests drive time directly.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable

from ..config import AuthThrottle

MAX_RECORDS = 100_000


class Throttle:
    def __init__(self, config: AuthThrottle, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._blocked: dict[tuple[str, str], float] = {}

    def _keys(self, ip: str, user: str | None) -> list[tuple[str, str]]:
        keys = [("ip", ip)]
        if user:
            keys.append(("user", user.lower()))
        return keys

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.config.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def blocked(self, ip: str, user: str | None) -> bool:
        """True while this IP or user is refused."""
        if not self.config.enabled:
            return False
        now = self.clock()
        for key in self._keys(ip, user):
            until = self._blocked.get(key)
            if until is not None:
                if until > now:
                    return True
                del self._blocked[key]
        return False

    def failure(self, ip: str, user: str | None) -> float:
        """Record a failed login; returns the delay (seconds) before the reply."""
        if not self.config.enabled:
            return 0.0
        now = self.clock()
        worst = 0
        for key in self._keys(ip, user):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
            worst = max(worst, len(times))
            if len(times) >= self.config.block_after:
                self._blocked[key] = now + self.config.block_for
        while len(self._failures) > MAX_RECORDS:
            self._failures.popitem(last=False)
        if len(self._blocked) > MAX_RECORDS:
            self._blocked = {k: v for k, v in self._blocked.items() if v > now}
        return min(self.config.base_delay * 2 ** (worst - 1), self.config.max_delay)

    def success(self, user: str) -> None:
        self._failures.pop(("user", user.lower()), None)
