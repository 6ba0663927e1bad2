"""Gateway logins: LOGIN / AUTHENTICATE PLAIN checked against the account's upstream POP3 server.

Theory of operation: the route of the user names an upstream; its `pop3:` service decides the
password (USER/PASS or AUTH PLAIN via `pop3_client.Pop3Client`, then QUIT). A success is
remembered for `gateway.auth_cache_ttl` seconds as an HMAC-SHA256 of the account name and the
password under a random key made at start and kept only in memory: never the password itself.
A slow password hash (scrypt) buys nothing here: the cache never leaves the process, and whoever
could read its memory could read the key too (issue 13: scrypt was 7% of the gateway's CPU).
While a remembered success is fresh, a reconnect does not touch the upstream; when the upstream
is unreachable and the hash matches, the login succeeds too (issue 7: UNAVAILABLE only "unless a
cached success applies"). A wrong password drops the remembered success. The upstream's replies
are bounded as a sync's are (`ReplyLimits` from ``gateway.limits``: ``pop3_reply_timeout``...),
so a stalling upstream answers a login TEMPFAIL in that time, not in the client's 120 s default.
"""

from __future__ import annotations

import hmac
import os
import time

from ..config import Upstream
from ..session.failures import Failure
from ..session.oauth_sasl import TOKEN_MECHANISMS
from ..session.upstream import UpstreamError
from .pop3_client import Pop3Client, ReplyLimits


class Authenticator:
    """Checks passwords against POP3 upstreams, with the keyed success cache described above."""

    def __init__(self, ttl: float, limits: ReplyLimits):
        self.ttl, self.limits = ttl, limits
        self._key = os.urandom(32)   # in memory only, new each start
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}

    def _hash(self, upstream: str, user: str, password: bytes) -> bytes:
        account = upstream.encode() + b"\0" + user.encode() + b"\0"
        return hmac.digest(self._key, account + password, "sha256")

    def _cached(self, key: tuple[str, str], digest: bytes) -> bool:
        entry = self._cache.get(key)
        return entry is not None and entry[1] > time.monotonic() and hmac.compare_digest(entry[0], digest)

    async def verify(self, upstream_name: str, upstream: Upstream, user: str,
                     password: bytes, mechanism: str = "PLAIN") -> Failure | None:
        """None when `password` is right for `user`, else AUTH_REJECTED, or AUTH_TEMPFAIL when
        the upstream could not decide. Never raises for upstream trouble. With an OAuth2
        `mechanism` (a brokered login, proxy/oauth2) `password` is the SASL message."""
        key = (upstream_name, user)
        digest = self._hash(upstream_name, user, password)
        if self._cached(key, digest):
            return None
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return Failure.AUTH_REJECTED
        try:
            client = await Pop3Client.connect(upstream, self.limits)
            try:
                if mechanism in TOKEN_MECHANISMS:
                    await client.login_token(mechanism, password)
                else:
                    await client.login(user, text)
                await client.quit()
            finally:
                await client.aclose()
        except UpstreamError as exc:
            if exc.failure is Failure.AUTH_REJECTED:
                self._cache.pop(key, None)
                return Failure.AUTH_REJECTED
            return Failure.AUTH_TEMPFAIL
        self._cache[key] = (digest, time.monotonic() + self.ttl)
        return None
