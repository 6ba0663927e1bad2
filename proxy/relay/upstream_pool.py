"""Reuse of authenticated upstream IMAP connections (`upstreams.NAME.imap.reuse`), sans-IO: the
pool's decisions and what a session did to its upstream connection. Off by default.

Theory of operation (issue 16): a relayed client's login waits for the upstream's own login
(Dovecot: ~4.5 ms of a ~5.5 ms session). With `reuse:` on, an upstream connection whose client
ended cleanly (its LOGOUT, answered by the proxy and never forwarded, or its end of stream with
nothing in flight) and that is in a known clean state is *parked* here, still logged in, keyed
by upstream and user; a later login of the same user with the same credentials, within `max_age`
of that connection's real upstream login, *takes* it instead of logging in again. This is the
trade-off of Dovecot's own auth cache: a password change or a disabled account takes effect for
the proxy after at most `max_age`.

- Credentials are never kept: a login's `secret` is an HMAC-SHA256 of user and password under a
  random key made per process (`secret`), compared in constant time. Only an upstream's
  accepted login is parked, so a refused password is never cached, and a wrong password never
  matches a parked connection (it goes to the upstream, which refuses it).
- Clean state (`SessionState`): every command the client sent is judged from its line as the
  relay forwards it. A known set of commands leaves nothing behind that UNSELECT (RFC 3691)
  cannot undo: SELECT/EXAMINE (without parameters: CONDSTORE/QRESYNC, RFC 7162 3.1, persist),
  fetches, searches, stores (without MODSEQ, CHANGEDSINCE or UNCHANGEDSINCE, which enable
  CONDSTORE for the rest of the connection), mailbox management. Anything else taints the
  connection for good: ENABLE, NOTIFY, IDLE, COMPRESS, ID, a literal (APPEND...), an unknown
  command, a line split over chunks, a session handed back to trio. A tainted connection is
  closed at the session's end as always. A connection where a mailbox may be selected is sent
  UNSELECT (never CLOSE, which expunges) and parked only on its OK.
- Bounds: `size` connections per process and MAX_PER_USER per user (the oldest parked is
  dropped for a new one),
  `max_idle` parked, `max_age` since the real login; checked at take, so nothing runs while
  connections wait. A connection that got anything while parked (a BYE, an EOF: the caller
  peeks before taking it) is dropped, not reused. A reload (a new runtime: routing may change)
  and a drain empty the pool.

The pool is one per process and touched only under the relay engine's lock
(relay/engine_reuse.py does its I/O).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..imap._lines import PLAIN_COMMAND_RE

__all__ = ["MAX_PER_USER", "OUTCOMES", "Parked", "Pool", "SessionState", "secret"]

# The `outcome` label of mailproxy_upstream_reuse_total (proxy/metrics.py): a login that took a
# parked connection, or found none; a connection parked at a session's end, or not (tainted, its
# UNSELECT refused, too old already); one dropped from the pool: past max_age or max_idle, it
# got data or an EOF while parked, the pool (or the user's share) was full, a login of its user
# came with another password (superseded: changed, or a wrong one), or emptied (reload, drain).
OUTCOMES = ("hit", "miss", "parked", "unparkable", "expired", "idle", "closed", "full",
            "superseded", "emptied")

# Parked connections of one user at most: each is a logged-in session at the upstream, which
# bounds them per user and address (Dovecot: mail_max_userip_connections, 10 by default).
MAX_PER_USER = 4

T = TypeVar("T")


def secret(key: bytes, user: str, password: bytes) -> bytes:
    """What is kept of a login's credentials (HMAC-SHA256 under the process's random `key`):
    user and password are never stored."""
    return hmac.new(key, user.encode("utf-8", "surrogateescape") + b"\x00" + password,
                    hashlib.sha256).digest()


@dataclass(slots=True)
class Parked(Generic[T]):
    """A parked connection: `conn` is the caller's (a socket and its capabilities)."""

    upstream: str
    user: str
    secret: bytes
    logged_in: float   # when its upstream login succeeded (the clock of `now` below)
    parked: float
    owner: object      # the runtime it was parked under: another one (a reload) may not take it
    conn: T


class Pool(Generic[T]):
    """Parked connections, oldest first; every method returns what it dropped (to close)."""

    def __init__(self, size: int):
        self.size = size
        self._parked: OrderedDict[int, Parked[T]] = OrderedDict()
        self._serial = 0

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, entry: Parked[T]) -> list[tuple[Parked[T], str]]:
        """Keep `entry`; drops what another runtime parked (`emptied`) and, past `size`, the
        oldest (`full`)."""
        dropped = self._not_of(entry.owner)
        mine = [serial for serial, other in self._parked.items()
                if other.upstream == entry.upstream and other.user == entry.user]
        for serial in mine[:max(0, len(mine) + 1 - MAX_PER_USER)]:
            dropped.append((self._parked.pop(serial), "full"))
        self._serial += 1
        self._parked[self._serial] = entry
        while len(self._parked) > self.size:
            dropped.append((self._parked.popitem(last=False)[1], "full"))
        return dropped

    def take(self, upstream: str, user: str, secret: bytes, owner: object, now: float,
             max_age: float, max_idle: float) -> tuple[Parked[T] | None, list[tuple[Parked[T], str]]]:
        """The most recently parked connection of (`upstream`, `user`) with the same `secret`,
        or None; and what was dropped on the way: too old since its login (`expired`), parked
        too long (`idle`), the user's with another secret (`superseded`: a changed password
        makes them useless, and they hold the user's upstream connections; a wrong one only
        costs the next login its reuse), another runtime's (`emptied`)."""
        dropped = self._not_of(owner)
        found: Parked[T] | None = None
        for serial, entry in reversed(list(self._parked.items())):
            if entry.upstream != upstream or entry.user != user:
                continue
            if now - entry.logged_in >= max_age:
                dropped.append((self._parked.pop(serial), "expired"))
            elif now - entry.parked >= max_idle:
                dropped.append((self._parked.pop(serial), "idle"))
            elif not hmac.compare_digest(entry.secret, secret):
                dropped.append((self._parked.pop(serial), "superseded"))
            elif found is None:
                found = self._parked.pop(serial)
        return found, dropped

    def expire(self, now: float, max_age: float, max_idle: float) -> list[tuple[Parked[T], str]]:
        """Drop every connection past `max_age` or `max_idle` (a park's sweep)."""
        dropped: list[tuple[Parked[T], str]] = []
        for serial, entry in list(self._parked.items()):
            if now - entry.logged_in >= max_age:
                dropped.append((self._parked.pop(serial), "expired"))
            elif now - entry.parked >= max_idle:
                dropped.append((self._parked.pop(serial), "idle"))
        return dropped

    def clear(self) -> list[tuple[Parked[T], str]]:
        """Empty the pool (a drain)."""
        dropped = [(entry, "emptied") for entry in self._parked.values()]
        self._parked.clear()
        return dropped

    def _not_of(self, owner: object) -> list[tuple[Parked[T], str]]:
        stale = [serial for serial, entry in self._parked.items() if entry.owner is not owner]
        return [(self._parked.pop(serial), "emptied") for serial in stale]


# -- what a session did to its upstream connection ---------------------------------------------
# Commands after which UNSELECT (RFC 3691) leaves the connection as a fresh login does
# (authenticated state, nothing selected, nothing enabled); the arguments of some are checked
# too (`_ENABLING`). UID's subcommand is judged as the command.
_CLEAN = frozenset((
    b"CAPABILITY", b"NOOP", b"CHECK", b"NAMESPACE", b"LIST", b"LSUB", b"STATUS",
    b"CREATE", b"DELETE", b"RENAME", b"SUBSCRIBE", b"UNSUBSCRIBE",
    b"FETCH", b"SEARCH", b"STORE", b"COPY", b"MOVE", b"EXPUNGE", b"SORT", b"THREAD",
    b"GETQUOTA", b"GETQUOTAROOT", b"MYRIGHTS", b"GETACL", b"LISTRIGHTS", b"GETMETADATA",
))
_SELECTING = frozenset((b"SELECT", b"EXAMINE"))
_PLAIN_COMMAND = PLAIN_COMMAND_RE.fullmatch
_DESELECTING = frozenset((b"CLOSE", b"UNSELECT"))
# RFC 7162 3.1: CONDSTORE-enabling arguments (it then stays on for the connection)
_ENABLING = (b"MODSEQ", b"CHANGEDSINCE", b"UNCHANGEDSINCE", b"HIGHESTMODSEQ", b"CONDSTORE",
             b"QRESYNC", b"VANISHED")


class SessionState:
    """What the client's commands did to a reusable upstream connection (the module's
    docstring): `tainted` for good, or clean with a mailbox perhaps `selected`. `line(chunk)`
    judges one client chunk as the relay forwards it; it returns the tag of a chunk that is a
    LOGOUT alone (the connection may be parked then), else None."""

    __slots__ = ("tainted", "selected")

    def __init__(self) -> None:
        self.tainted = False
        self.selected = False

    def chunk(self, data: bytes) -> bytes | None:
        if self.tainted:
            return None
        if not data.endswith(b"\r\n") or b"{" in data:   # a line in parts, a literal
            self.tainted = True
            return None
        lines = data[:-2].split(b"\r\n")
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) < 2 or not parts[0]:
                self.tainted = True
                return None
            name = parts[1].upper()
            if name == b"UID" and len(parts) >= 3:
                name = parts[2].upper()
            if name == b"LOGOUT" and len(parts) == 2:
                if len(lines) == 1 and _PLAIN_COMMAND(data):   # (a valid tag: RFC 3501 9)
                    return parts[0]
                self.tainted = True   # pipelined with others: the upstream answers them all
                return None
            if name in _SELECTING:
                if b"(" in line:   # SELECT parameters: CONDSTORE, QRESYNC (RFC 7162)
                    self.tainted = True
                    return None
                self.selected = True
            elif name in _DESELECTING:
                self.selected = False
            elif name not in _CLEAN or any(word in line.upper() for word in _ENABLING):
                self.tainted = True
                return None
        return None
