"""Memory per idle relayed session (issue 16): N IMAP sessions logged in, SELECTed and in IDLE
through mailproxy (and through nginx's mail proxy in the same run), to one private Dovecot.

    .venv/bin/python bench/idle_memory.py [--sessions 1000] [--no-nginx] [--engines tasks,epoll]

Reports each relay's RSS growth (VmRSS from /proc, after a gc-free settle) divided by N, and the
NOOP round trip p50 of one more session while the N are held. RSS does not depend on the load of
the machine, so these figures are steady even where the speed figures are not. Each session is
one raw socket that pipelines `LOGIN`, `SELECT INBOX` and `IDLE` in one write and waits for `+`.

Scale (issue 16, `--sessions 10000`): the open-file limit is raised for this process and what it
starts (each relay holds 2 descriptors per session; root may raise the hard limit), the
listener's `max_connections` and nginx's `worker_connections` are set above N, and Dovecot's
imap processes serve `--dovecot-clients` sessions each (default 1: one process per session).
While the N are held, one more client measures the NOOP round trip (p50) and the time of a whole
login (connect, greeting, LOGIN, LOGOUT; p50 and max of `--logins`), and the relay's CPU time
(user+sys, /proc) per opened session is reported.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
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


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def login_ms(port: int, user: str, password: str, count: int) -> list[float]:
    """Whole logins of another client (connect, greeting, LOGIN, LOGOUT), in ms."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client = Imap(port)
        client.login(user, password)
        client.logout()
        client.close()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)


def measure(label: str, port: int, pid: int, user: str, password: str, count: int,
            logins: int) -> dict:
    time.sleep(1)
    before, cpu_before = rss_kb(pid), cpu_seconds(pid)
    started = time.monotonic()
    held = open_idle(port, user, password, count)
    opened = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    time.sleep(2)
    after = rss_kb(pid)
    probe = Imap(port)
    probe.login(user, password)
    probe.command(b"SELECT INBOX")
    noop = median([ns / 1000 for ns in probe.noop_rtt_ns(500)])
    probe.logout()
    probe.close()
    login = login_ms(port, user, password, logins)
    for sock in held:
        sock.close()
    per = (after - before) / count
    print(f"{label:10} RSS {before / 1024:7.1f} MB -> {after / 1024:7.1f} MB with {count} IDLE "
          f"sessions: {per:6.1f} KB per session; opened in {opened:.1f} s "
          f"({cpu / count * 1000:.2f} ms CPU each); while held: NOOP p50 {noop:.0f} us, "
          f"login p50 {median(login):.1f} ms, max {login[-1]:.1f} ms", flush=True)
    return {"per_session_kb": per, "noop_p50_us": noop, "login_p50_ms": median(login)}


def raise_open_files(sessions: int) -> None:
    """Each relay holds two descriptors per session (and a few dozen of its own), this process
    one per session."""
    want = 2 * sessions + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
    except (ValueError, OSError):
        sys.exit(f"{sessions} sessions need {want} open files; the limit is {soft}/{hard} "
                 "(run as root, or raise `ulimit -Hn`)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--no-nginx", dest="nginx", action="store_false")
    parser.add_argument("--no-mailproxy", dest="mailproxy", action="store_false")
    parser.add_argument("--dovecot-clients", type=int, default=1,
                        help="sessions per Dovecot imap process (service imap client_limit)")
    parser.add_argument("--engines", default="",
                        help="comma-separated relay.engine values, one proxy each (default: the default)")
    parser.add_argument("--logins", type=int, default=50,
                        help="logins of another client timed while the sessions are held")
    args = parser.parse_args()
    raise_open_files(args.sessions)
    with open("/proc/loadavg") as f:
        print(f"idle memory benchmark, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
              f"load average {f.read().split()[0]}, {args.sessions} sessions, "
              f"{args.dovecot_clients} per Dovecot imap process", flush=True)
    # the tests' Dovecot polls every 1 s in IDLE (inotify runs out past 128 imap processes);
    # 30 s (Dovecot's default) keeps 1,000 IDLE-ing processes from stat()ing every second here
    dovecot = (f"service imap {{\n  client_limit = {args.dovecot_clients}\n"
               f"  service_count = {0 if args.dovecot_clients > 1 else 1}\n}}\n"
               "mailbox_idle_check_interval = 30 secs\n")
    with Env("idle", dovecot_config=dovecot) as env:
        user, password = env.user_with(small_mailbox())
        for engine in ([e for e in args.engines.split(",") if e] or [""]) if args.mailproxy else []:
            proxy = env.proxy([{"name": "imap", "protocol": "imap",
                                "max_connections": args.sessions + 1000}], metrics=True,
                              extra={"relay": {"engine": engine}} if engine else None)
            measure(engine or "mailproxy", proxy.port("imap"), proxy.pid, user, password,
                    args.sessions, args.logins)
            proxy.stop()
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port,
                                     env.dovecot.pop3_port,
                                     worker_connections=2 * args.sessions + 1000)
            env.on_close(ng.stop)
            measure("nginx", ng.imap_port, nginx_worker(ng.server.server.proc.pid), user, password,
                    args.sessions, args.logins)
        with open("/proc/loadavg") as f:
            print(f"load average at the end {f.read().split()[0]}", flush=True)


if __name__ == "__main__":
    main()
