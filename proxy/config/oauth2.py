"""`upstreams.NAME.auth:`: how mailproxy logs in upstream; with `oauth2:`, brokered logins
(proxy/oauth2/): clients log in to the proxy with a local password, the proxy logs in upstream
with an access token refreshed from the user's stored refresh token."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import StrictStr

from .values import STRICT, Duration, Problem, SecretValue


@dataclass(frozen=True, slots=True)
class OAuth2:
    """The provider's endpoints and mailproxy's client there, and the files of the users:
    local passwords (`password_file`) and refresh tokens (`token_file`, sealed with
    `key_file`)."""

    __pydantic_config__ = STRICT
    token_url: StrictStr
    client_id: StrictStr
    password_file: Path                      # `user:argon2-hash` lines (mailproxy oauth2 hash-password)
    token_file: Path                         # refresh tokens, AES-GCM sealed (mailproxy oauth2 enrol)
    key_file: Path                           # keyid:base64key lines, as gateway.key_file
    client_secret: SecretValue | None = None  # none for a public client
    scope: tuple[StrictStr, ...] = ()
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    device_authorization_url: StrictStr | None = None  # enrol --flow device (RFC 8628)
    authorization_url: StrictStr | None = None         # enrol --flow code (RFC 6749 4.1, PKCE)
    redirect_uri: StrictStr = "http://localhost"       # where the provider sends the code
    timeout: Duration = 10.0                 # one token endpoint request
    refresh_margin: Duration = 60.0          # refresh this long before the access token expires
    password_cache_ttl: Duration = 300.0     # a local password success is remembered (0: never)


@dataclass(frozen=True, slots=True)
class UpstreamAuth:
    """How the proxy logs in upstream: the client's own credentials (the default) or, with
    `oauth2:`, a brokered access token."""

    __pydantic_config__ = STRICT
    oauth2: OAuth2 | None = None


def check_oauth2(at: tuple, oauth2: OAuth2) -> list[Problem]:
    errors: list[Problem] = []
    for key in ("token_url", "device_authorization_url", "authorization_url"):
        url = getattr(oauth2, key)
        if url is not None and not url.startswith(("https://", "http://")):
            errors.append((at + (key,), "expected an https:// URL"))
    if oauth2.timeout <= 0:
        errors.append((at + ("timeout",), "must be more than 0"))
    for key in ("refresh_margin", "password_cache_ttl"):
        if getattr(oauth2, key) < 0:
            errors.append((at + (key,), "must be 0 or more"))
    return errors


def resolve_auth_paths(auth: UpstreamAuth | None, base: Path) -> UpstreamAuth | None:
    """The OAuth2 files relative to the config file's directory (`/` keeps absolute paths)."""
    if auth is None or auth.oauth2 is None:
        return auth
    o = auth.oauth2
    return replace(auth, oauth2=replace(o, password_file=base / o.password_file,
                                        token_file=base / o.token_file,
                                        key_file=base / o.key_file))
