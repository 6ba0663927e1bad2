"""Refresh tokens at rest: one JSON file per OAuth2 upstream, each token sealed with AES-GCM.

Theory of operation: the file is `{"version": 1, "refresh_tokens": {user: base64(record)}}`,
each record sealed by proxy/store/crypto.py under the key ring of `key_file` (the same format
and rotation as gateway.key_file: the last key seals, every key opens) with the associated data
`mailproxy-oauth2-refresh:USER`, so a record copied to another user fails to open instead of
logging someone in as another. Tokens are never kept in clear, on disk or in a repr.

Writers (`mailproxy oauth2 enrol`, and the proxy itself when the provider rotates a refresh
token) hold an exclusive `flock` on `FILE.lock`, read the file afresh, change one user and
replace the file atomically (temporary file, fsync, rename; mode 0600), so a running proxy and
the enrol command may both write. Readers read the whole file, which is small. All file work
runs in worker threads.

Spending a refresh token is serialised across processes (`workers: N`, `gateway sync` beside a
running proxy): `refreshing(user)` holds an exclusive `flock` on the user's own lock file,
`FILE.locks/<sha256(user)>`, for the whole read -> token request -> write back, so a provider
that rotates refresh tokens (RFC 6749 6, and RFC 9700 4.14.2 reuse detection) never sees the
same one spent twice: the second process reads the token the first stored. The wait is bounded
by the holder's token request (`timeout`); the kernel drops the lock of a process that dies.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ..store.crypto import KeyRing, StoreKeyError, seal, unseal

__all__ = ["TokenFile", "TokenFileError"]

VERSION = 1


class TokenFileError(Exception):
    """The token file or its key file cannot be used; the message names the file, never a
    token."""


def _aad(user: str) -> bytes:
    return b"mailproxy-oauth2-refresh:" + user.encode()


class TokenFile:
    def __init__(self, path: Path, key_file: Path):
        self.path = path
        self.key_file = key_file
        self._ring: KeyRing | None = None

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    def ring(self) -> KeyRing:
        if self._ring is None:
            try:
                self._ring = KeyRing.from_file(self.key_file)
            except StoreKeyError as exc:
                raise TokenFileError(f"key_file {self.key_file}: {exc}") from None
        return self._ring

    def _read(self) -> dict[str, str]:
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenFileError(f"{self.path}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError):
            raise TokenFileError(f"{self.path}: not a mailproxy token file (bad JSON)") from None
        if not isinstance(data, dict):
            data = {}
        tokens = data.get("refresh_tokens")
        if data.get("version") != VERSION or not isinstance(tokens, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
            raise TokenFileError(f"{self.path}: not a mailproxy token file (version {VERSION})")
        return tokens

    def users(self) -> list[str]:
        """The enrolled users (blocking; for the CLI and tests)."""
        return sorted(self._read())

    def read_token(self, user: str) -> str | None:
        """The user's refresh token, or None when not enrolled (blocking)."""
        record = self._read().get(user)
        if record is None:
            return None
        try:
            sealed = base64.b64decode(record, validate=True)
            return unseal(sealed, _aad(user), self.ring(), f"refresh token of {user!r}").decode()
        except (binascii.Error, StoreKeyError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{self.path}: {exc}") from None

    def write_token(self, user: str, token: str | None) -> None:
        """Store (or, with None, remove) the user's refresh token (blocking; see the module
        docstring for locking)."""
        sealed = None if token is None else base64.b64encode(
            seal(token.encode(), _aad(user), self.ring())).decode()
        lock_fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            tokens = self._read()
            if sealed is None:
                tokens.pop(user, None)
            else:
                tokens[user] = sealed
            self._replace({"version": VERSION, "refresh_tokens": tokens})
        except OSError as exc:
            raise TokenFileError(f"{self.path}: {exc.strerror}") from None
        finally:
            os.close(lock_fd)

    def _replace(self, data: dict[str, Any]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def lock_path(self, user: str) -> Path:
        """The user's refresh lock file (named by a hash: no user name becomes a path)."""
        digest = hashlib.sha256(user.encode()).hexdigest()[:32]
        return self.path.with_name(f"{self.path.name}.locks") / digest

    def _lock_refresh(self, user: str) -> int:
        path = self.lock_path(user)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise TokenFileError(f"{path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @asynccontextmanager
    async def refreshing(self, user: str) -> AsyncIterator[None]:
        """Hold the user's cross-process refresh lock (see the module docstring). Raises
        TokenFileError when the lock file cannot be made.

        Resource handling: the lock is taken in a worker thread that is not abandoned on
        cancellation (a cancelled caller waits for the lock, then lets it go at once), and
        released by closing its descriptor."""
        fd = await trio.to_thread.run_sync(self._lock_refresh, user)
        try:
            yield
        finally:
            os.close(fd)

    async def load(self, user: str) -> str | None:
        return await trio.to_thread.run_sync(self.read_token, user)

    async def store(self, user: str, token: str) -> None:
        await trio.to_thread.run_sync(self.write_token, user, token)
