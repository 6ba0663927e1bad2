"""A small nginx `auth_http` service for tests and benchmarks (stdlib http.server in a thread).

It answers from a table of accounts: a user with the right password gets `Auth-Status: OK`,
`Auth-Server`, `Auth-Port` (the account's Dovecot port for the asked protocol) and, when the
account says so, `Auth-User` / `Auth-Pass` (rewriting); a wrong password gets
`Auth-Status: Invalid login or password` with `Auth-Wait: <wait>` when `wait` is set; an unknown
user gets the same refusal, or a bare 404 when `unknown_404` is set. Every request's headers are
kept in `requests` (tests assert on them). `stop()` shuts it down; `port` stays reserved by
nobody, so a test can start another service on it (`AuthService(port=...)`) after a stop.
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Account:
    password: str
    server: str
    ports: dict[str, int]                  # protocol -> port
    upstream_user: str | None = None       # Auth-User
    upstream_password: str | None = None   # Auth-Pass


@dataclass
class AuthService:
    accounts: dict[str, Account] = field(default_factory=dict)
    wait: int | None = None               # Auth-Wait on refusals
    unknown_404: bool = False
    status_override: dict[str, dict[str, str]] = field(default_factory=dict)  # user -> headers
    waits: dict[str, int] = field(default_factory=dict)  # user -> Auth-Status: WAIT answers first
    port: int = 0

    def __post_init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                headers = {k: v for k, v in self.headers.items()}
                with service._lock:
                    service.requests.append(headers)
                code, reply = service.answer(headers)
                self.send_response(code)
                for name, value in reply.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    def answer(self, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        from urllib.parse import unquote

        user = unquote(headers.get("Auth-User", ""))
        password = unquote(headers.get("Auth-Pass", ""))
        protocol = headers.get("Auth-Protocol", "")
        if user in self.status_override:
            return 200, dict(self.status_override[user])
        if self.waits.get(user):
            self.waits[user] -= 1
            return 200, {"Auth-Status": "WAIT", "Auth-Wait": "1"}
        account = self.accounts.get(user)
        if account is None and self.unknown_404:
            return 404, {}
        if account is None or account.password != password or protocol not in account.ports:
            reply = {"Auth-Status": "Invalid login or password"}
            if self.wait is not None:
                reply["Auth-Wait"] = str(self.wait)
            return 200, reply
        reply = {"Auth-Status": "OK", "Auth-Server": account.server,
                 "Auth-Port": str(account.ports[protocol])}
        if account.upstream_user is not None:
            reply["Auth-User"] = account.upstream_user
        if account.upstream_password is not None:
            reply["Auth-Pass"] = account.upstream_password
        return 200, reply

    def asked(self, user: str) -> list[dict[str, str]]:
        from urllib.parse import unquote

        with self._lock:
            return [r for r in self.requests if unquote(r.get("Auth-User", "")) == user]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
