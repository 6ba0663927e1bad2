"""Authentication-failure throttling per client IP, per user and IP, and (much later) per user.

Theory of operation: each failed login adds a failure to three records, for the client IP, for
the user name from that IP, and for the user name alone, each keeping the failures of the last
`window`. The reply to a failure is delayed by `base_delay * 2**(n-1)` (capped at `max_delay`),
n being the larger of the IP's and the user-from-this-IP's counts, which slows guessing without
affecting anyone else. Once the IP or the user-from-this-IP count reaches `block_after`, that
IP, or that user from that IP, is refused outright (before any upstream is asked) until
`block_for` has passed. As Dovecot does, a user is not locked out everywhere because someone
guessed at their password from one address (ten failures used to lock a user out from every IP:
an easy denial of service); only `user_block_after` failures from all addresses together
(default 100) refuse the user everywhere, against a guess spread over many addresses. A success
clears the user's records, not the IP's. Records are pruned as they expire and their number is
capped, so a flood of distinct names cannot grow memory without bound. The clock is passed in,
so tests drive time directly. Every method holds one lock: the relay engine's thread asks
`clean` and records `success` while trio's thread records failures (proxy/relay/engine_login.py).
"""

from __future__ import annotations

import threading
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
        self._lock = threading.Lock()   # (uncontended: about 0.1 us per call)

    def _keys(self, ip: str, user: str | None) -> list[tuple[str, str]]:
        """The records of one attempt; the last one (if any) is the user's, from anywhere."""
        keys = [("ip", ip)]
        if user:
            keys += [("user_ip", f"{user.lower()} {ip}"), ("user", user.lower())]
        return keys

    def _limit(self, key: tuple[str, str]) -> int:
        return self.config.user_block_after if key[0] == "user" else self.config.block_after

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
        with self._lock:
            return self._blocked_now(ip, user)

    def _blocked_now(self, ip: str, user: str | None) -> bool:
        now = self.clock()
        for key in self._keys(ip, user):
            until = self._blocked.get(key)
            if until is not None:
                if until > now:
                    return True
                del self._blocked[key]
        return False

    def clean(self, ip: str, user: str) -> bool:
        """No failure and no block recorded for this IP or user: `blocked` is False and
        `success` has nothing to clear. Without the clock (the relay engine's login, which
        leaves every other login to trio)."""
        if not self.config.enabled:
            return True
        keys = self._keys(ip, user)
        with self._lock:
            return not any(key in self._blocked or key in self._failures for key in keys)

    def failure(self, ip: str, user: str | None) -> float:
        """Record a failed login; returns the delay (seconds) before the reply."""
        if not self.config.enabled:
            return 0.0
        with self._lock:
            return self._failure(ip, user)

    def _failure(self, ip: str, user: str | None) -> float:
        now = self.clock()
        worst = 0
        for key in self._keys(ip, user):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
            if key[0] != "user":   # the delay is this client's, not every client's of the user
                worst = max(worst, len(times))
            if len(times) >= self._limit(key):
                self._blocked[key] = now + self.config.block_for
        while len(self._failures) > MAX_RECORDS:
            self._failures.popitem(last=False)
        if len(self._blocked) > MAX_RECORDS:
            self._blocked = {k: v for k, v in self._blocked.items() if v > now}
        return float(min(self.config.base_delay * 2 ** (worst - 1), self.config.max_delay))

    def success(self, user: str, ip: str | None = None) -> None:
        with self._lock:
            self._failures.pop(("user", user.lower()), None)
            if ip is not None:
                self._failures.pop(("user_ip", f"{user.lower()} {ip}"), None)
