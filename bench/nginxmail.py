"""nginx's mail proxy (Debian nginx + libnginx-mod-mail) in front of the bench Dovecot, for comparison.

nginx asks an `auth_http` server where to send each user; `AuthResponder` is a tiny threaded
http.server that says OK and points IMAP at Dovecot's IMAP port and POP3 at its POP3 port. nginx
itself is tests/support/nginx.py's (the one the tests run): in the foreground, its config, pid
file and error log in a temp dir, one worker process (mailproxy is one process too) and nginx's
default buffers, as operators run it; here with 4096 connections and a `warn` log.
"""

from __future__ import annotations

import http.server
import pathlib
import threading

import common  # noqa: F401 (puts tests/ on sys.path)

from support import nginx  # noqa: E402


def available() -> bool:
    return nginx.available()


class AuthResponder:
    def __init__(self, imap_port: int, pop3_port: int):
        ports = {"imap": imap_port, "pop3": pop3_port}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                proto = (self.headers.get("Auth-Protocol") or "").lower()
                self.send_response(200)
                if proto in ports:
                    self.send_header("Auth-Status", "OK")
                    self.send_header("Auth-Server", "127.0.0.1")
                    self.send_header("Auth-Port", str(ports[proto]))
                else:
                    self.send_header("Auth-Status", "unsupported protocol")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class NginxMail:
    """nginx with an AuthResponder sending every user to Dovecot's `imap_port` / `pop3_port`."""

    def __init__(self, directory: pathlib.Path, imap_port: int, pop3_port: int, workers: int = 1,
                 worker_connections: int = 4096,
                 tls: tuple[pathlib.Path, pathlib.Path] | None = None):
        """`tls` (certificate, key): also IMAPS and POP3S listeners (`imaps_port`, `pop3s_port`)
        relaying in clear to the same Dovecot ports, as mailproxy's TLS listeners do."""
        self.auth = AuthResponder(imap_port, pop3_port)
        try:
            self.server = nginx.NginxMail(directory, f"http://127.0.0.1:{self.auth.port}/auth",
                                          worker_connections=worker_connections,
                                          log_level="warn",
                                          workers=workers, tls=tls)
        except BaseException:
            self.auth.stop()
            raise
        self.imap_port, self.pop3_port = self.server.imap_port, self.server.pop3_port
        self.imaps_port, self.pop3s_port = self.server.imaps_port, self.server.pop3s_port

    def stop(self) -> None:
        self.server.stop()
        self.auth.stop()
