"""A small OAuth2 token introspection service for tests (stdlib http.server in a thread), and
the Dovecot settings that make Dovecot's `oauth2` passdb validate tokens against it.

`OAuth2Service(tokens={"token": "user@example.com"})` answers RFC 7662 introspection
(`POST /introspect` with `token=...`, as Dovecot 2.3 sends it in `introspection_mode = post`) with
`{"active": true, "username": user}` for a known token and `{"active": false}` otherwise, and
keeps the tokens it was asked about in `asked`. `dovecot_config(directory)` writes the passdb's
args file and returns the config text to append to a test Dovecot (`start_dovecot(...,
extra_config=...)`): mechanisms PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER, the passwd-file passdb
first and the oauth2 passdb for the token mechanisms.

It is also the provider's token endpoint for brokering (`POST /token`, RFC 6749): a
`refresh_tokens={"rt": "user"}` grant issues a new access token (`at-N`, which introspection
then accepts) with `expires_in`, rotating the refresh token when `rotate` is set; a revoked
one answers `invalid_grant`; `down = True` answers 503. `grants` records each grant_type
asked, `forms` each token request. `hold()` keeps token requests unanswered (each recorded in
`arrived` as it comes) until `release()`, so a test can line up concurrent refreshes.
Device flow (RFC 8628): `POST /device` hands out a device code whose token request answers
`authorization_pending` until `approve(user_code, user)`.
Authorization code flow: `codes={"code": "user"}` exchanged with a PKCE verifier, checked.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import itertools
import json
import pathlib
import threading
from typing import Any
from urllib.parse import parse_qs


class OAuth2Service:
    def __init__(self, tokens: dict[str, str] | None = None,
                 refresh_tokens: dict[str, str] | None = None, client_id: str = "mailproxy",
                 client_secret: str | None = None):
        self.tokens = dict(tokens or {})
        self.asked: list[str] = []
        self.refresh_tokens = dict(refresh_tokens or {})
        self.client_id, self.client_secret = client_id, client_secret
        self.expires_in = 3600
        self.rotate = False
        self.down = False
        self.issue_unusable = False   # issued access tokens are not active at introspection
        self.grants: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.devices: dict[str, dict[str, str | None]] = {}   # device_code -> user_code, user
        self.codes: dict[str, str] = {}
        self.challenges: dict[str, str] = {}                   # code -> PKCE challenge
        self._serial = itertools.count(1)
        self.lock = threading.Lock()
        self.arrived: list[dict[str, str]] = []
        self._released: threading.Event | None = None
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(
                    self.rfile.read(length).decode("utf-8", "replace")).items()}
                service.wait_if_held(self.path, form)
                with service.lock:
                    status, reply = service.answer(self.path, form)
                body = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict]:
        if path == "/introspect":
            token = form.get("token", "")
            self.asked.append(token)
            user = self.tokens.get(token)
            return 200, {"active": True, "username": user} if user else {"active": False}
        if self.down:
            return 503, {"error": "temporarily_unavailable"}
        if form.get("client_id") != self.client_id or \
                form.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client"}
        if path == "/device":
            n = next(self._serial)
            self.devices[f"dc-{n}"] = {"user_code": f"UC-{n}", "user": None}
            return 200, {"device_code": f"dc-{n}", "user_code": f"UC-{n}",
                         "verification_uri": f"{self.url}/activate", "expires_in": 600,
                         "interval": 1}
        if path != "/token":
            return 404, {"error": "not_found"}
        self.forms.append(form)
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        if grant == "refresh_token":
            user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "revoked"}
            if self.rotate:
                del self.refresh_tokens[form["refresh_token"]]
            return 200, self.issue(user, rotate=self.rotate)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            device = self.devices.get(form.get("device_code", ""))
            if device is None:
                return 400, {"error": "expired_token"}
            if device["user"] is None:
                return 400, {"error": "authorization_pending"}
            del self.devices[form["device_code"]]
            return 200, self.issue(str(device["user"]), rotate=True)
        if grant == "authorization_code":
            code = form.get("code", "")
            user = self.codes.pop(code, None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(
                hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if user is None or self.challenges.get(code) != challenge:
                return 400, {"error": "invalid_grant"}
            return 200, self.issue(user, rotate=True)
        return 400, {"error": "unsupported_grant_type"}

    def issue(self, user: str, rotate: bool) -> dict:
        n = next(self._serial)
        access = f"at-{n}-{user}"
        if not self.issue_unusable:
            self.tokens[access] = user
        reply: dict = {"access_token": access, "token_type": "Bearer",
                       "expires_in": self.expires_in}
        if rotate:
            reply["refresh_token"] = f"rt-{n}-{user}"
            self.refresh_tokens[reply["refresh_token"]] = user
        return reply

    def hold(self) -> None:
        self._released = threading.Event()

    def release(self) -> None:
        if self._released is not None:
            self._released.set()

    def wait_if_held(self, path: str, form: dict[str, str]) -> None:
        if path != "/token":
            return
        with self.lock:
            self.arrived.append(form)
            released = self._released
        if released is not None:
            released.wait(timeout=60)   # a bound only a broken test reaches

    def approve(self, user_code: str, user: str) -> None:
        with self.lock:
            for device in self.devices.values():
                if device["user_code"] == user_code:
                    device["user"] = user
                    return
        raise KeyError(user_code)

    def revoke_access(self) -> None:
        """Every access token issued so far stops being accepted (expired, in Dovecot's eyes)."""
        with self.lock:
            self.tokens = {t: u for t, u in self.tokens.items() if not t.startswith("at-")}

    def dovecot_config(self, directory: pathlib.Path) -> str:
        args = pathlib.Path(directory) / f"oauth2-{self.port}.conf.ext"
        args.write_text(f"introspection_mode = post\n"
                        f"introspection_url = http://127.0.0.1:{self.port}/introspect\n"
                        "username_attribute = username\nactive_attribute = active\n"
                        "active_value = true\n")
        args.chmod(0o644)
        return ("\nauth_mechanisms = plain login xoauth2 oauthbearer\n"
                f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {args}\n}}\n")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
