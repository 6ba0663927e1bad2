"""Which host of a pool serves a user: sticky per user, healthy hosts first.

Rendezvous hashing (highest random weight): each host gets the score
`blake2b(host NUL user)` and the user's hosts are tried in falling score order. So a user
always reaches the same host while it is up; when it is down the user goes to their next host
(and only that host's users move); when it comes back they return. Adding or removing a host
moves only the users whose first choice changes (about 1/n of them), which a `hash % n` scheme
would not.

`order(user, hosts, is_up)` puts the hosts that `is_up` reports up first (keeping score order)
and the others after them, as a last resort: a health check can be stale, and trying a host
marked down beats refusing the login when every host is marked down.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Sequence


def _score(host: str, user: str) -> bytes:
    return hashlib.blake2b(f"{host}\0{user}".encode(), digest_size=8).digest()


def preference(user: str, hosts: Sequence[str]) -> list[str]:
    """The hosts in the user's sticky order (first: the user's home host)."""
    if len(hosts) <= 1:
        return list(hosts)
    return sorted(hosts, key=lambda host: _score(host, user.lower()), reverse=True)


def order(user: str, hosts: Sequence[str], is_up: Callable[[str], bool]) -> list[str]:
    """Hosts to try for `user`: up ones in sticky order, then the ones marked down."""
    ranked = preference(user, hosts)
    return [h for h in ranked if is_up(h)] + [h for h in ranked if not is_up(h)]


class HostHealth:
    """What is known of each pool host, per protocol: a failed connect marks a host down
    (`mark_down`) for `down_for` seconds, after which it is tried first again by its users (so
    they return home); `record` sets a state as a health check saw it (proxy/health.py), a
    down one until the next check is due. Unknown hosts are up."""

    def __init__(self, down_for: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.down_for = down_for
        self._clock = clock
        self._down_until: dict[tuple[str, str, str], float] = {}

    def is_up(self, upstream: str, host: str, protocol: str) -> bool:
        until = self._down_until.get((upstream, host, protocol))
        return until is None or self._clock() >= until

    def record(self, upstream: str, host: str, protocol: str, up: bool,
               next_check: float = 0.0) -> None:
        """A check's result; a host seen down stays down at least until `next_check` seconds
        from now (when the checker looks again)."""
        if up:
            self._down_until.pop((upstream, host, protocol), None)
        else:
            self.mark_down(upstream, host, protocol, next_check)

    def mark_down(self, upstream: str, host: str, protocol: str, at_least: float = 0.0) -> None:
        self._down_until[upstream, host, protocol] = self._clock() + max(self.down_for, at_least)

    def hosts_to_try(self, upstream: str, hosts: Sequence[str], protocol: str,
                     user: str) -> list[str]:
        """`order()` with this record's view of which hosts are up."""
        return order(user, hosts, lambda host: self.is_up(upstream, host, protocol))
