"""The provider's token endpoint (RFC 6749 3.2) and device authorization endpoint (RFC 8628 3.1),
over httpx on trio.

Theory of operation: every request is a form POST with the client's credentials in the body
(`client_id`, and `client_secret` for a confidential client, RFC 6749 2.3.1), bounded by the
upstream's `timeout` as a whole, its reply read up to `MAX_REPLY` bytes. The outcome is one of:

- a `Grant` (HTTP 200 with an `access_token`, RFC 6749 5.1);
- `TokenRefused(error)`: an error reply (RFC 6749 5.2) with its `error` code, e.g.
  `invalid_grant` (the refresh token was revoked or expired) or, while enrolling with a device
  code, `authorization_pending` / `slow_down` (RFC 8628 3.5);
- `EndpointUnavailable(detail)`: the endpoint could not be asked (down, timeout, 5xx, a reply
  that is not an OAuth2 reply).

Tokens and secrets never appear in an exception's text, a repr or a log line: an error code is
reduced to its RFC 6749 A.7 characters, a detail names only what failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from ..config import OAuth2

__all__ = ["DeviceAuthorization", "EndpointUnavailable", "Grant", "TokenRefused",
           "device_authorization", "request_token"]

MAX_REPLY = 64 * 1024
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")   # RFC 6749 A.7, bounded


class EndpointUnavailable(Exception):
    """The endpoint could not be asked; `detail` is safe to log."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class TokenRefused(Exception):
    """An OAuth2 error reply; `error` is its code (safe to log)."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class Grant:
    access_token: str = field(repr=False)
    expires_in: float | None
    refresh_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


async def _post(settings: OAuth2, url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON object) of one form POST. Raises EndpointUnavailable."""
    data = {**form, "client_id": settings.client_id}
    if settings.client_secret is not None:
        data["client_secret"] = settings.client_secret.value.decode()
    try:
        with trio.fail_after(settings.timeout):
            async with httpx.AsyncClient(timeout=settings.timeout, follow_redirects=False) as client:
                async with client.stream("POST", url, data=data,
                                         headers={"Accept": "application/json"}) as response:
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_REPLY:
                            raise EndpointUnavailable(f"reply longer than {MAX_REPLY} bytes")
    except trio.TooSlowError:
        raise EndpointUnavailable(f"no reply within {settings.timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise EndpointUnavailable(f"request failed ({type(exc).__name__})") from None
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise EndpointUnavailable(f"HTTP {response.status_code} without a JSON object")
    return response.status_code, reply


def _refusal(status: int, reply: dict[str, Any]) -> Exception:
    error = reply.get("error")
    if status in (400, 401) and isinstance(error, str) and _ERROR_CODE.match(error):
        return TokenRefused(error)
    return EndpointUnavailable(f"HTTP {status}")


def _seconds(value: Any, default: float | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


async def request_token(settings: OAuth2, form: dict[str, str]) -> Grant:
    """POST `form` (grant_type and its parameters) to the token endpoint. Raises TokenRefused
    or EndpointUnavailable."""
    status, reply = await _post(settings, settings.token_url, form)
    if status != 200:
        raise _refusal(status, reply)
    token, kind = reply.get("access_token"), reply.get("token_type", "Bearer")
    if not isinstance(token, str) or not token or not isinstance(kind, str) \
            or kind.lower() != "bearer":
        raise EndpointUnavailable("reply without a bearer access_token")
    refresh = reply.get("refresh_token")
    return Grant(token, _seconds(reply.get("expires_in"), None),
                 refresh if isinstance(refresh, str) and refresh else None)


async def device_authorization(settings: OAuth2) -> DeviceAuthorization:
    """RFC 8628 3.1-3.2: a device code and the user code to show. Raises TokenRefused or
    EndpointUnavailable."""
    assert settings.device_authorization_url is not None
    status, reply = await _post(settings, settings.device_authorization_url,
                                {"scope": " ".join(settings.scope)})
    if status != 200:
        raise _refusal(status, reply)
    # Google names it verification_url (before RFC 8628); both are accepted
    uri = reply.get("verification_uri") or reply.get("verification_url")
    device_code, user_code = reply.get("device_code"), reply.get("user_code")
    if not all(isinstance(v, str) and v for v in (uri, device_code, user_code)):
        raise EndpointUnavailable("device authorization reply without device_code, user_code "
                                  "and verification_uri")
    complete = reply.get("verification_uri_complete")
    return DeviceAuthorization(str(device_code), str(user_code), str(uri),
                               complete if isinstance(complete, str) else None,
                               _seconds(reply.get("expires_in"), 600.0) or 600.0,
                               _seconds(reply.get("interval"), 5.0) or 0.0)  # RFC 8628 3.2
