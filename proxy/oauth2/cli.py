"""`mailproxy oauth2 enrol` and `mailproxy oauth2 hash-password`: give a user of an OAuth2
upstream their refresh token and their local password.

`enrol --config FILE --upstream NAME USER` runs one of two flows against the upstream's
provider and stores the refresh token it yields in the upstream's `token_file` (sealed, see
token_file.py); a running proxy uses it at the user's next login, without a reload:

- `--flow device` (RFC 8628): prints the verification address and the user code, then polls the
  token endpoint every `interval` seconds (`slow_down` adds 5, RFC 8628 3.5) until the user has
  signed in, refused, or the code expired.
- `--flow code` (RFC 6749 4.1 with PKCE S256, RFC 7636): prints the authorization address; the
  user signs in in any browser and pastes back the code, or the whole address the browser was
  sent to (its `state` is checked).

`hash-password [USER]` reads a password (twice on a terminal, else one line of stdin) and prints
the `USER:$argon2id$...` line for `password_file`. Tokens and secrets are never printed.
Exit status: 0 done, 1 the provider refused or could not be reached, 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import secrets
import sys
from urllib.parse import parse_qs, urlencode, urlsplit

import trio

from .. import config as config_mod
from ..config import OAuth2
from .endpoint import (
    DeviceAuthorization,
    EndpointUnavailable,
    Grant,
    TokenRefused,
    device_authorization,
    request_token,
)
from .passwords import hash_password
from .token_file import TokenFile, TokenFileError

EXIT_FAILED, EXIT_USAGE = 1, 2
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5.0       # RFC 8628 3.5


class EnrolFailed(Exception):
    """The flow ended without a refresh token; the message says why (no token in it)."""


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
            ) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "oauth2", help="OAuth2 brokering: enrol users, hash passwords")
    commands = parser.add_subparsers(dest="oauth2_command", required=True)
    enrol = commands.add_parser("enrol", help="store a user's refresh token for an OAuth2 upstream")
    enrol.add_argument("--config", required=True, metavar="FILE", help="mailproxy YAML config")
    enrol.add_argument("--upstream", required=True, metavar="NAME",
                       help="an upstream with auth: {oauth2: ...}")
    enrol.add_argument("--flow", choices=("device", "code"), default="device",
                       help="device code (RFC 8628, default) or a pasted authorization code")
    enrol.add_argument("user", metavar="USER", help="the user's login name (as in password_file)")
    hasher = commands.add_parser("hash-password", help="print a password_file line for a user")
    hasher.add_argument("user", metavar="USER", nargs="?", help="prefix the hash with USER:")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    if args.oauth2_command == "hash-password":
        return _hash_password(args.user)
    config = config_mod.load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    upstream = config.upstreams.get(args.upstream)
    settings = None if upstream is None or upstream.auth is None else upstream.auth.oauth2
    if settings is None:
        print(f"oauth2 enrol: upstream {args.upstream!r} has no auth: {{oauth2: ...}} section",
              file=sys.stderr)
        return EXIT_USAGE
    needed = "device_authorization_url" if args.flow == "device" else "authorization_url"
    if getattr(settings, needed) is None:
        print(f"oauth2 enrol: --flow {args.flow} needs upstreams.{args.upstream}.auth.oauth2."
              f"{needed}", file=sys.stderr)
        return EXIT_USAGE
    try:
        grant = (trio.run(_device_flow, settings, args.user) if args.flow == "device"
                 else _code_flow(settings))
        if grant.refresh_token is None:
            raise EnrolFailed("the provider issued no refresh token (does scope include "
                              "offline_access, or what the provider needs for one?)")
        TokenFile(settings.token_file, settings.key_file).write_token(args.user,
                                                                      grant.refresh_token)
    except (EnrolFailed, TokenFileError) as exc:
        print(f"oauth2 enrol: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.user}: refresh token stored in {settings.token_file} "
          f"(upstream {args.upstream})")
    return 0


def _hash_password(user: str | None) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("hash-password: the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("hash-password: empty password", file=sys.stderr)
        return EXIT_USAGE
    print(f"{user}:{hash_password(password)}" if user else hash_password(password))
    return 0


async def _token(settings: OAuth2, form: dict[str, str]) -> Grant:
    try:
        return await request_token(settings, form)
    except EndpointUnavailable as exc:
        raise EnrolFailed(f"token endpoint: {exc.detail}") from None


async def _device_flow(settings: OAuth2, user: str) -> Grant:
    try:
        device: DeviceAuthorization = await device_authorization(settings)
    except (TokenRefused, EndpointUnavailable) as exc:
        raise EnrolFailed(f"device authorization endpoint: {exc}") from None
    print(f"To let mailproxy read the mail of {user}, sign in as that user at\n"
          f"  {device.verification_uri_complete or device.verification_uri}\n"
          f"and enter the code\n  {device.user_code}\n"
          f"Waiting for the sign-in (this code expires in {device.expires_in:.0f} s)...",
          flush=True)
    interval = device.interval
    with trio.move_on_after(device.expires_in):
        while True:
            await trio.sleep(interval)
            try:
                return await _token(settings, {"grant_type": DEVICE_GRANT,
                                               "device_code": device.device_code})
            except TokenRefused as exc:
                if exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                elif exc.error != "authorization_pending":
                    raise EnrolFailed(f"the provider refused: {exc.error}") from None
    raise EnrolFailed("the code expired before the sign-in")


def _code_flow(settings: OAuth2) -> Grant:
    assert settings.authorization_url is not None
    verifier = secrets.token_urlsafe(64)     # RFC 7636 4.1: 43 to 128 characters
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    query = {"response_type": "code", "client_id": settings.client_id,
             "redirect_uri": settings.redirect_uri, "scope": " ".join(settings.scope),
             "state": state, "code_challenge": challenge.rstrip(b"=").decode(),
             "code_challenge_method": "S256"}
    separator = "&" if "?" in settings.authorization_url else "?"
    print(f"Sign in as the user at\n  {settings.authorization_url}{separator}{urlencode(query)}\n"
          f"then paste the code, or the whole address the browser was sent to:", flush=True)
    code = _pasted_code(sys.stdin.readline().strip(), state)
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": settings.redirect_uri, "code_verifier": verifier}
    try:
        return trio.run(_token, settings, form)
    except TokenRefused as exc:
        raise EnrolFailed(f"the provider refused the code: {exc.error}") from None


def _pasted_code(pasted: str, state: str) -> str:
    """The code from what the user pasted: a bare code, or the redirect address."""
    if "?" not in pasted and "#" not in pasted:
        if not pasted:
            raise EnrolFailed("no code was pasted")
        return pasted
    parts = urlsplit(pasted)
    params = {k: v[0] for k, v in parse_qs(parts.query or parts.fragment).items()}
    if "error" in params:
        raise EnrolFailed(f"the provider refused: {params['error'][:64]}")
    if params.get("state") != state:
        raise EnrolFailed("the address is not the answer to this sign-in (state differs)")
    if not params.get("code"):
        raise EnrolFailed("the address holds no code")
    return params["code"]
