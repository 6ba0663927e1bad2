"""nginx's mail proxy (Debian nginx + libnginx-mod-mail) in front of the bench Dovecot, for comparison.

nginx asks an `auth_http` server where to send each user; `AuthResponder` is a tiny threaded
http.server that says OK and points IMAP at Dovecot's IMAP port and POP3 at its POP3 port. nginx runs in
the foreground (`daemon off`) as a subprocess with its config, pid file and error log in a temp dir,
with one worker process (mailproxy is one process too) and nginx's default buffers, as operators run it.
"""

from __future__ import annotations

import http.server
import pathlib
import shutil
import socket
import subprocess
import threading
import time

MODULE_CANDIDATES = ["/usr/lib/nginx/modules/ngx_mail_module.so",
                     "/usr/share/nginx/modules/ngx_mail_module.so"]


def find_module() -> str | None:
    try:
        out = subprocess.run(["dpkg", "-L", "libnginx-mod-mail"], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            if line.endswith("ngx_mail_module.so"):
                return line.strip()
    except OSError:
        pass
    for path in MODULE_CANDIDATES:
        if pathlib.Path(path).exists():
            return path
    return None


def nginx_binary() -> str | None:
    return shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")


def available() -> bool:
    return nginx_binary() is not None and find_module() is not None


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NginxMail:
    def __init__(self, directory: pathlib.Path, imap_port: int, pop3_port: int, workers: int = 1):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.auth = AuthResponder(imap_port, pop3_port)
        self.imap_port = _free_port()
        self.pop3_port = _free_port()
        module = find_module()
        self.conf = directory / "nginx.conf"
        self.error_log = directory / "error.log"
        self.conf.write_text(f"""
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
pid {directory}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 4096; }}
mail {{
    auth_http 127.0.0.1:{self.auth.port}/auth;
    proxy on;
    server {{
        listen 127.0.0.1:{self.pop3_port};
        protocol pop3;
        pop3_auth plain;
    }}
    server {{
        listen 127.0.0.1:{self.imap_port};
        protocol imap;
        imap_auth plain login;
    }}
}}
""")
        self.proc = subprocess.Popen([nginx_binary(), "-c", str(self.conf), "-p", str(directory),
                                      "-e", str(self.error_log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(directory / "nginx.out", "wb"), start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for port in (self.pop3_port, self.imap_port):
            while True:
                if self.proc.poll() is not None:
                    log = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
                    raise RuntimeError(f"nginx exited {self.proc.returncode}: "
                                       f"{(self.dir / 'nginx.out').read_text(errors='replace')}{log}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                        if sock.recv(100)[:1] in (b"+", b"*"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx not ready on {port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.auth.stop()
