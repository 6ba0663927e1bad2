"""Memory per idle relayed session (issue 16): N IMAP sessions logged in, SELECTed and in IDLE
through mailproxy (and through nginx's mail proxy in the same run), to one private Dovecot.

    .venv/bin/python bench/idle_memory.py [--sessions 1000] [--no-nginx]

Reports each relay's RSS growth (VmRSS from /proc, after a gc-free settle) divided by N, and the
NOOP round trip p50 of one more session while the N are held. RSS does not depend on the load of
the machine, so these figures are steady even where the speed figures are not. Each session is
one raw socket that pipelines `LOGIN`, `SELECT INBOX` and `IDLE` in one write and waits for `+`.
Dovecot runs one imap process per session (raise --sessions with care: it is N processes).
"""

from __future__ import annotations

import argparse
import pathlib
import socket
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import nginxmail  # noqa: E402
from clients import Imap  # noqa: E402
from common import Env, median, small_mailbox  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def nginx_worker(master: int) -> int:
    children = pathlib.Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def open_idle(port: int, user: str, password: str, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(b'a LOGIN "%s" "%s"\r\nb SELECT INBOX\r\nc IDLE\r\n'
                     % (user.encode(), password.encode()))
        seen = b""
        while b"\r\n+ " not in seen:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"closed before IDLE: {seen[-300:]!r}")
            seen += data
        sockets.append(sock)
    return sockets


def measure(label: str, port: int, pid: int, user: str, password: str, count: int) -> dict:
    time.sleep(1)
    before = rss_kb(pid)
    started = time.monotonic()
    held = open_idle(port, user, password, count)
    opened = time.monotonic() - started
    time.sleep(2)
    after = rss_kb(pid)
    probe = Imap(port)
    probe.login(user, password)
    probe.command(b"SELECT INBOX")
    noop = median([ns / 1000 for ns in probe.noop_rtt_ns(500)])
    probe.logout()
    probe.close()
    for sock in held:
        sock.close()
    per = (after - before) / count
    print(f"{label:10} RSS {before / 1024:7.1f} MB -> {after / 1024:7.1f} MB with {count} IDLE "
          f"sessions: {per:6.1f} KB per session; opened in {opened:.1f} s; "
          f"NOOP p50 of another session meanwhile {noop:.0f} us", flush=True)
    return {"per_session_kb": per, "noop_p50_us": noop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--no-nginx", dest="nginx", action="store_false")
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        print(f"idle memory benchmark, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
              f"load average {f.read().split()[0]}, {args.sessions} sessions", flush=True)
    with Env("idle") as env:
        user, password = env.user_with(small_mailbox())
        proxy = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=True)
        measure("mailproxy", proxy.port("imap"), proxy.pid, user, password, args.sessions)
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port,
                                     env.dovecot.pop3_port)
            env.on_close(ng.stop)
            measure("nginx", ng.imap_port, nginx_worker(ng.proc.pid), user, password,
                    args.sessions)


if __name__ == "__main__":
    main()
