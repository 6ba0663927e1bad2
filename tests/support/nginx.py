"""nginx's mail proxy (Debian `nginx` + `libnginx-mod-mail`) for tests, asking an auth_http service.

`start_nginx_mail(directory, auth_url)` writes a config with one IMAP and one POP3 server on free
loopback ports (plain text, `imap_auth plain login`, `pop3_auth plain`), runs nginx in the
foreground (`daemon off`, one worker) with its pid file, error log and temp paths in `directory`,
and returns once both ports greet. `stop()` ends it (SIGTERM, then SIGKILL after a bounded wait).
The same way as bench/nginxmail.py runs it for the benchmarks.
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time

from .dovecot import free_ports

MISSING_MESSAGE = "install nginx and libnginx-mod-mail (make test does this)"
START_TIMEOUT = 10.0


def module_path() -> str | None:
    out = subprocess.run(["dpkg", "-L", "libnginx-mod-mail"], capture_output=True, text=True,
                         check=False)
    for line in out.stdout.splitlines():
        if line.endswith("ngx_mail_module.so"):
            return line.strip()
    return None


class NginxMail:
    def __init__(self, directory: pathlib.Path, auth_url: str, *, auth_timeout: str = "5s"):
        binary = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")
        module = module_path()
        if binary is None or module is None:
            raise AssertionError(MISSING_MESSAGE)
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.imap_port, self.pop3_port = free_ports(2)
        self.error_log = self.dir / "error.log"
        auth = auth_url.removeprefix("http://")
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(f"""
load_module {module};
daemon off;
master_process on;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 1024; }}
mail {{
    auth_http {auth};
    auth_http_timeout {auth_timeout};
    server {{ listen 127.0.0.1:{self.imap_port}; protocol imap; imap_auth plain login; }}
    server {{ listen 127.0.0.1:{self.pop3_port}; protocol pop3; pop3_auth plain; }}
}}
""")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf), "-p", str(self.dir), "-e", str(self.error_log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "nginx.out", "wb"), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for port, greeting in ((self.imap_port, b"* OK"), (self.pop3_port, b"+OK")):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"nginx exited {self.proc.returncode}: "
                                         f"{(self.dir / 'nginx.out').read_text(errors='replace')}"
                                         f"{self.log()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                        if sock.recv(100).startswith(greeting):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx not ready on port {port}:\n{self.log()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
