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
