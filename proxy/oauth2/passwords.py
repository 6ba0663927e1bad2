"""Local passwords for brokered logins: a file of `user:hash` lines, Argon2 hashes only.

Theory of operation: a client of an OAuth2-brokered upstream logs in to the proxy with a password
the proxy checks itself. The file holds one `user:hash` line per user; the hash is an Argon2id
(or Argon2i) PHC string, as `mailproxy oauth2 hash-password` prints it and as Dovecot's
`doveadm pw -s ARGON2ID` writes it (its `{ARGON2ID}` prefix is accepted). Blank lines and `#`
comments are skipped; any other line makes the file invalid as a whole (an operator's typo must
not silently lock a user out or let one in).

Hashing costs tens of milliseconds and 64 MiB by design, so `verify` runs in worker threads
(argon2-cffi releases the GIL), at most `MAX_CONCURRENT` at once, never on the event loop. An
unknown user is checked against a dummy hash, so the answer takes as long as for a known one.
The file is re-read when its modification time or size changes: adding a user needs no reload.
A success is remembered for `password_cache_ttl` (see PasswordFile), so reconnecting clients
cost one HMAC, not one Argon2 run.
"""

from __future__ import annotations

import functools
import hmac
import os
import threading
import time
from pathlib import Path
from typing import Callable

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import Type

__all__ = ["MAX_CONCURRENT", "PasswordFile", "PasswordFileError", "hash_password", "parse"]

MAX_CONCURRENT = 2          # Argon2 verifications at once (each takes ~64 MiB and one core)
_PREFIXES = ("{ARGON2ID}", "{ARGON2I}")   # Dovecot's scheme names before the PHC string
_HASHER = PasswordHasher(type=Type.ID)     # RFC 9106 defaults of argon2-cffi
_LIMITER = trio.CapacityLimiter(MAX_CONCURRENT)


class PasswordFileError(Exception):
    """The password file cannot be read or has a line that is not `user:argon2-hash`; the
    message names the file and line, never a hash."""


def hash_password(password: str) -> str:
    """A new Argon2id PHC string for `password` (random salt)."""
    return _HASHER.hash(password)


def _strip_scheme(value: str) -> str:
    for prefix in _PREFIXES:
        if value.upper().startswith(prefix):
            return value[len(prefix):]
    return value


def parse(text: str, where: str) -> dict[str, str]:
    """`user:hash` lines -> {user: PHC string}. Raises PasswordFileError."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, value = line.partition(":")
        phc = _strip_scheme(value.strip())
        if not sep or not user or not phc.startswith(("$argon2id$", "$argon2i$")):
            raise PasswordFileError(f"{where} line {number}: expected user:$argon2id$... "
                                    f"(mailproxy oauth2 hash-password prints one)")
        if user in users:
            raise PasswordFileError(f"{where} line {number}: user {user!r} appears twice")
        users[user] = phc
    return users


@functools.cache
def _dummy() -> str:
    """A hash to check unknown users against (made once, on first use)."""
    return hash_password("mailproxy: no such user")


class PasswordFile:
    """The users of one password file; re-read when the file changes. A successful check is
    remembered for `cache_ttl` seconds as an HMAC of the user and password under a random key
    kept in memory only (as the gateway's login cache): a client that reconnects costs no new
    Argon2 run. A change of the file forgets every remembered success."""

    def __init__(self, path: Path, cache_ttl: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.cache_ttl, self.clock = cache_ttl, clock
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()
        self._key = os.urandom(32)
        self._successes: dict[str, tuple[bytes, float, tuple[int, int]]] = {}

    def _stat(self) -> tuple[int, int]:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise PasswordFileError(f"{self.path}: {exc.strerror}") from None
        return stat.st_mtime_ns, stat.st_size

    def load(self) -> dict[str, str]:
        """The current users (re-read when the file changed). Raises PasswordFileError."""
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                try:
                    text = self.path.read_text(encoding="utf-8")
                except OSError as exc:
                    raise PasswordFileError(f"{self.path}: {exc.strerror}") from None
                except UnicodeDecodeError:
                    raise PasswordFileError(f"{self.path}: not UTF-8 text") from None
                self._users = parse(text, str(self.path))
                self._stamp = stamp
                self._successes = {}
            return self._users

    def _digest(self, user: str, password: bytes) -> bytes:
        return hmac.digest(self._key, user.encode() + b"\0" + password, "sha256")

    def _remembered(self, user: str, password: bytes) -> bool:
        entry = self._successes.get(user)
        if entry is None or entry[1] <= self.clock():
            return False
        return entry[2] == self._stat() and hmac.compare_digest(entry[0],
                                                                 self._digest(user, password))

    def _verify(self, user: str, password: bytes) -> bool:
        phc = self.load().get(user)
        stamp = self._stamp
        try:
            ok: bool = _HASHER.verify(phc or _dummy(), password)
        except (VerificationError, InvalidHashError):
            ok = False
        if ok and phc is not None and self.cache_ttl > 0 and stamp is not None:
            with self._lock:
                self._successes[user] = (self._digest(user, password),
                                         self.clock() + self.cache_ttl, stamp)
        return ok and phc is not None

    async def verify(self, user: str, password: bytes) -> bool:
        """True when `user` is in the file and `password` matches its hash: a remembered
        success, else Argon2 in a worker thread (at most MAX_CONCURRENT at once). Raises
        PasswordFileError."""
        if self._remembered(user, password):
            return True
        return await trio.to_thread.run_sync(self._verify, user, password, limiter=_LIMITER)
