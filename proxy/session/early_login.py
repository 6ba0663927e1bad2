"""What each upstream announced before login, remembered so that later logins go out early.

Theory of operation: the relay's first session to an upstream learns its capabilities the
ordinary way (the IMAP greeting's CAPABILITY code; the POP3 CAPA before login). Later sessions
write their login right after the connect, built for those capabilities, and read the greeting
and the verdict in one round trip (relay/imap_upstream.py, relay/pop3_upstream.py). An upstream
that sends no greeting after such an early login (a greeting-delay / early-talker defence) is
marked `()`, "known, never early", until the next reload, and one warning names the setting
that makes this permanent (`upstreams.NAME.<protocol>.pipelined_login: false`). At most
MAX_KNOWN_GREETINGS upstreams are remembered per runtime (lookups can name many).

The relay engine's thread reads and writes the table as trio's does (relay/engine_login.py): the
table is an immutable snapshot, read without a lock, and a change builds the next snapshot under
a lock and swaps it in with one assignment. Changes are rare: an upstream's greeting, once.
"""

from __future__ import annotations

import logging
import threading
from types import MappingProxyType
from typing import Mapping

from .. import logs
from .upstream import deadline

__all__ = ["MAX_KNOWN_GREETINGS", "KnownGreetings"]

MAX_KNOWN_GREETINGS = 1024


class KnownGreetings:
    """(protocol, upstream name) -> the capabilities announced before login; `()` = never early."""

    __slots__ = ("_known", "_lock")

    def __init__(self) -> None:
        self._known: Mapping[tuple[str, str], tuple[bytes, ...]] = MappingProxyType({})
        self._lock = threading.Lock()   # (writers only)

    def snapshot(self) -> Mapping[tuple[str, str], tuple[bytes, ...]]:
        """The table as it is: never changed afterwards (a change swaps in a new one)."""
        return self._known

    def early(self, protocol: str, name: str) -> tuple[bytes, ...]:
        """The capabilities to build an early login for; () when none may be sent."""
        return self._known.get((protocol, name), ())

    def learnt(self, protocol: str, name: str, capabilities: tuple[bytes, ...]) -> None:
        """What a greeting (or CAPA) announced, unless early logins there were turned off."""
        key = (protocol, name)
        known = self._known.get(key)
        if not capabilities or known == () or known == capabilities:   # (the common case)
            return
        with self._lock:
            if self._known.get(key) != ():
                self._swap(key, capabilities)

    def _swap(self, key: tuple[str, str], capabilities: tuple[bytes, ...]) -> None:
        """The next snapshot with `key` set (under the lock)."""
        known = dict(self._known)
        if len(known) >= MAX_KNOWN_GREETINGS and key not in known:
            known.clear()
        known[key] = capabilities
        self._known = MappingProxyType(known)

    def no_greeting(self, protocol: str, name: str, exc: BaseException, steps: deadline) -> None:
        """An early login got no greeting back, `exc` ended the wait: a failure (the upstream
        closed, or answered otherwise) or `steps` expiring turns early logins there off; a
        cancelled session (client gone, drain) does not."""
        if isinstance(exc, Exception):
            self._refused(protocol, name, str(exc))
        elif steps.expired:
            self._refused(protocol, name, steps.reason)

    def refused(self, protocol: str, name: str, reason: str) -> None:
        """An early login got no greeting back, for `reason` (the relay engine's login)."""
        self._refused(protocol, name, reason)

    def _refused(self, protocol: str, name: str, reason: str) -> None:
        """None more for this upstream until a reload; said once, with how to make it
        permanent."""
        key = (protocol, name)
        with self._lock:
            if self._known.get(key) == ():
                return
            self._swap(key, ())
        logs.event("upstream_pipelined_login_off", logging.WARNING, upstream=name,
                   reason=logs.sanitize(reason, 120),
                   hint=f"set upstreams.{name}.{protocol}.pipelined_login: false if this "
                        "upstream refuses commands sent before its greeting")
