"""OAuth2 brokering: a user's access token for an upstream, from their stored refresh token.

Theory of operation: one `Broker` per `upstreams.X.auth.oauth2` section (`Brokers` keeps them,
keyed by the section itself, so a reload that keeps the section keeps the cache). A login:

    local password (passwords.PasswordFile, Argon2, in a thread)
    -> access_token(user): the cached token while it has more than `refresh_margin` left,
       else, one refresh at a time per user, in this process (a trio lock) and across
       processes (the token file's per-user lock, held from reading the refresh token to
       storing the rotated one): the refresh token from the token file ->
       grant_type=refresh_token at token_url -> a rotated refresh token is stored back
    -> the SASL message for the upstream (XOAUTH2 or OAUTHBEARER, RFC 7628 3.1)

An upstream that refuses a cached token (revoked, or expired early) has it forgotten with
`forget`, and the login path asks once more, which refreshes. Errors say what the client is
told: `NotEnrolled` and `RefreshRefused` (`invalid_grant`: the user must enrol again) are a
failed login, `BrokerUnavailable` (endpoint down, a client misconfigured at the provider, a
token file that cannot be read) a temporary failure. None of them carries a token or secret.
The cache holds only users who passed their local password check, so it is bounded by the
password file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import trio

from .. import logs
from ..config import Config, OAuth2
from ..metrics import Metrics
from .endpoint import EndpointUnavailable, TokenRefused, request_token
from .passwords import PasswordFile, PasswordFileError
from .token_file import TokenFile, TokenFileError

__all__ = ["Broker", "BrokerUnavailable", "Brokers", "NotEnrolled", "RefreshRefused",
           "sasl_message"]

DEFAULT_LIFETIME = 300.0   # seconds an access token is used when the reply has no expires_in
REVOKED = "invalid_grant"  # RFC 6749 5.2: the refresh token is invalid, expired or revoked


class NotEnrolled(Exception):
    """No refresh token is stored for the user."""


class RefreshRefused(Exception):
    """The provider refused the user's refresh token (`error` is the OAuth2 code)."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


class BrokerUnavailable(Exception):
    """No token can be had now (`detail` is safe to log)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def sasl_message(mechanism: str, user: str, token: str) -> bytes:
    """The client message of SASL XOAUTH2 (Google) or OAUTHBEARER (RFC 7628 3.1, the user as
    the GS2 authzid, RFC 5801 4: "," as "=2C", "=" as "=3D")."""
    if mechanism.upper() == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={authzid},\x01auth=Bearer {token}\x01\x01".encode()


@dataclass
class _Cached:
    token: str = field(repr=False)
    good_until: float


class Broker:
    """Access tokens for the users of one OAuth2 upstream section."""

    def __init__(self, settings: OAuth2, clock: Callable[[], float] = trio.current_time,
                 metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.mechanism = settings.mechanism.upper()
        self.passwords = PasswordFile(settings.password_file, settings.password_cache_ttl)
        self.tokens = TokenFile(settings.token_file, settings.key_file)
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def check_password(self, user: str, password: bytes) -> bool:
        """The local password check. Raises BrokerUnavailable when the file is unusable."""
        try:
            return await self.passwords.verify(user, password)
        except PasswordFileError as exc:
            logs.event("oauth2_password_file_error", logging.ERROR, detail=str(exc))
            raise BrokerUnavailable("password file unusable") from None

    def cached(self, user: str) -> str | None:
        entry = self._cache.get(user)
        return entry.token if entry is not None and entry.good_until > self.clock() else None

    def forget(self, user: str, token: str) -> None:
        """The upstream refused `token`: the next access_token() refreshes."""
        entry = self._cache.get(user)
        if entry is not None and entry.token == token:
            del self._cache[user]

    async def access_token(self, user: str) -> str:
        """A usable access token for `user`. Raises NotEnrolled, RefreshRefused or
        BrokerUnavailable."""
        token = self.cached(user)
        if token is not None:
            return token
        lock = self._locks.setdefault(user, trio.Lock())
        async with lock:   # one refresh per user at a time; the others use its result
            token = self.cached(user)
            return token if token is not None else await self._refresh(user)

    async def _refresh(self, user: str) -> str:
        try:
            async with self.tokens.refreshing(user):
                return await self._refresh_locked(user)
        except TokenFileError as exc:
            logs.event("oauth2_token_file_error", logging.ERROR, detail=str(exc))
            raise BrokerUnavailable("token file unusable") from None

    async def _refresh_locked(self, user: str) -> str:
        refresh = await self.tokens.load(user)   # under the lock: another process's rotation
        if refresh is None:
            raise NotEnrolled(user)
        started = self.clock()
        try:
            form = {"grant_type": "refresh_token", "refresh_token": refresh}
            if self.settings.scope:   # RFC 6749 6; Microsoft's v2.0 endpoint wants it
                form["scope"] = " ".join(self.settings.scope)
            grant = await request_token(self.settings, form)
        except TokenRefused as exc:
            if exc.error == REVOKED:
                self._count("refused")
                raise RefreshRefused(exc.error) from None
            self._count("unavailable")
            raise BrokerUnavailable(f"token endpoint refused the client: {exc.error}") from None
        except EndpointUnavailable as exc:
            self._count("unavailable")
            raise BrokerUnavailable(f"token endpoint: {exc.detail}") from None
        self._count("ok")
        if grant.refresh_token is not None and grant.refresh_token != refresh:
            try:   # RFC 6749 6: the provider may issue a new refresh token
                await self.tokens.store(user, grant.refresh_token)
            except (TokenFileError, OSError) as exc:
                logs.event("oauth2_token_file_error", logging.ERROR, detail=str(exc))
        lifetime = DEFAULT_LIFETIME if grant.expires_in is None else grant.expires_in
        self._cache[user] = _Cached(grant.access_token,
                                    started + lifetime - self.settings.refresh_margin)
        return grant.access_token

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.oauth2_refreshes.labels(result).inc()

    def message(self, user: str, token: str) -> bytes:
        return sasl_message(self.mechanism, user, token)


class Brokers:
    """One Broker per OAuth2 section, shared by the relay and the gateway across reloads."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._brokers: dict[OAuth2, Broker] = {}

    def get(self, settings: OAuth2) -> Broker:
        broker = self._brokers.get(settings)
        if broker is None:
            broker = self._brokers[settings] = Broker(settings, metrics=self.metrics)
        return broker

    def keep_only(self, config: Config) -> None:
        """Drop the brokers of sections a reload removed or changed."""
        wanted = {up.auth.oauth2 for up in config.upstreams.values()
                  if up.auth is not None and up.auth.oauth2 is not None}
        self._brokers = {k: v for k, v in self._brokers.items() if k in wanted}
