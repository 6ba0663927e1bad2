"""nginx's mail proxy (Debian `nginx` + `libnginx-mod-mail`) for tests and benchmarks, asking an
auth_http service.

`NginxMail(directory, auth_url)` writes a config with one IMAP and one POP3 server on free
loopback ports (plain text, `imap_auth plain login`, `pop3_auth plain`), runs nginx in the
foreground (`daemon off`, one worker unless told) with its pid file, error log and temp paths in `directory`
(support/daemon.py), and returns once both ports greet. `stop()` ends it (SIGTERM, then SIGKILL
after a bounded wait). bench/nginxmail.py runs it with more connections and a quieter log.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

from .daemon import Foreground, greets
from .dovecot import free_ports

MISSING_MESSAGE = "install nginx and libnginx-mod-mail (make test does this)"


def module_path() -> str | None:
    out = subprocess.run(["dpkg", "-L", "libnginx-mod-mail"], capture_output=True, text=True,
                         check=False)
    for line in out.stdout.splitlines():
        if line.endswith("ngx_mail_module.so"):
            return line.strip()
    return None


def binary() -> str | None:
    return shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")


def available() -> bool:
    return binary() is not None and module_path() is not None


class NginxMail:
    def __init__(self, directory: pathlib.Path, auth_url: str, *, auth_timeout: str = "5s",
                 worker_connections: int = 1024, log_level: str = "info", workers: int = 1,
                 tls: tuple[pathlib.Path, pathlib.Path] | None = None):
        """`tls` (certificate chain, key): also an IMAPS and a POP3S server (implicit TLS,
        `imaps_port` / `pop3s_port`), relaying to the same auth_http answer in clear."""
        nginx, module = binary(), module_path()
        if nginx is None or module is None:
            raise AssertionError(MISSING_MESSAGE)
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port = free_ports(4)
        self.error_log = self.dir / "error.log"
        auth = auth_url.removeprefix("http://")
        self.conf = self.dir / "nginx.conf"
        tls_servers = "" if tls is None else f"""
    ssl_certificate {tls[0]};
    ssl_certificate_key {tls[1]};
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{ listen 127.0.0.1:{self.imaps_port} ssl; protocol imap; imap_auth plain login; }}
    server {{ listen 127.0.0.1:{self.pop3s_port} ssl; protocol pop3; pop3_auth plain; }}"""
        self.conf.write_text(f"""
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
pid {self.dir}/nginx.pid;
error_log {self.error_log} {log_level};
events {{ worker_connections {worker_connections}; }}
mail {{
    auth_http {auth};
    auth_http_timeout {auth_timeout};
    server {{ listen 127.0.0.1:{self.imap_port}; protocol imap; imap_auth plain login; }}
    server {{ listen 127.0.0.1:{self.pop3_port}; protocol pop3; pop3_auth plain; }}{tls_servers}
}}
""")
        self.server = Foreground("nginx", [nginx, "-c", str(self.conf), "-p", str(self.dir),
                                           "-e", str(self.error_log)], self.dir)
        self.server.wait_ready({f"IMAP port {self.imap_port}": greets(self.imap_port, b"* OK"),
                                f"POP3 port {self.pop3_port}": greets(self.pop3_port, b"+OK")},
                               log=lambda: self.server.output() + self.log())

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        self.server.stop()
