"""A small OAuth2 token introspection service for tests (stdlib http.server in a thread), and
the Dovecot settings that make Dovecot's `oauth2` passdb validate tokens against it.

`OAuth2Service(tokens={"token": "user@example.com"})` answers RFC 7662 introspection
(`POST /introspect` with `token=...`, as Dovecot 2.3 sends it in `introspection_mode = post`) with
`{"active": true, "username": user}` for a known token and `{"active": false}` otherwise, and
keeps the tokens it was asked about in `asked`. `dovecot_config(directory)` writes the passdb's
args file and returns the config text to append to a test Dovecot (`start_dovecot(...,
extra_config=...)`): mechanisms PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER, the passwd-file passdb
first and the oauth2 passdb for the token mechanisms.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import threading
from typing import Any
from urllib.parse import parse_qs


class OAuth2Service:
    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {})
        self.asked: list[str] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                token = form.get("token", [""])[0]
                service.asked.append(token)
                user = service.tokens.get(token)
                body = json.dumps({"active": True, "username": user} if user
                                  else {"active": False}).encode()
                self.send_response(200)
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
