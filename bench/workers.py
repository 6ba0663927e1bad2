"""Workers benchmark: IMAP sessions/s (LOGIN, SELECT, LOGOUT on a new connection, 16 concurrent
clients) through mailproxy with `workers: 1` and `workers: 2`, and through nginx's mail proxy with
`worker_processes 1` and `2`, beside Dovecot direct, interleaved in one run. Each worker's share
of the workers' CPU per round shows how evenly the shared accept queue spreads the sessions.

    .venv/bin/python bench/workers.py [--seconds 3] [--rounds 5] [--concurrency 16] [--no-nginx]

Prints the median sessions/s over rounds and the ratios workers 2 / workers 1 and mailproxy /
nginx with the same number of workers. See bench/README.md (Workers).
"""

from __future__ import annotations

import argparse
import sys
import time

import nginxmail
from clients import imap_session, session_rate
from common import Env, Table, interleave, median, ratio, small_mailbox
from relay import cpu_seconds


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def cpu_tree(pid: int) -> float:
    """utime + stime of a process and its children (the supervisor and its workers), seconds."""
    return cpu_seconds(pid) + sum(cpu_tree(child) for child in children(pid))


def worker_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each worker (child) of supervisor `pid`; {pid: its own} without workers."""
    workers = children(pid)
    return {child: cpu_tree(child) for child in workers} if workers else {pid: cpu_seconds(pid)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-nginx", dest="nginx", action="store_false")
    args = parser.parse_args()
    with Env("workers") as env:
        user, password = env.user_with(small_mailbox(10))
        listener = [{"name": "imap", "protocol": "imap"}]
        ports = {"direct": env.dovecot.imap_port}
        pids: dict[str, int] = {}
        for workers in (1, 2):
            proxy = env.proxy(listener, extra={"workers": workers})
            ports[f"mailproxy w{workers}"] = proxy.port("imap")
            pids[f"mailproxy w{workers}"] = proxy.pid
        if args.nginx and nginxmail.available():
            for workers in (1, 2):
                ng = nginxmail.NginxMail(env.root / f"nginx{workers}", env.dovecot.imap_port,
                                         env.dovecot.pop3_port, workers=workers)
                env.on_close(ng.stop)
                ports[f"nginx w{workers}"] = ng.imap_port
        for port in ports.values():   # warm-up: every worker's code paths, Dovecot's indexes
            session_rate(lambda p=port: imap_session(p, user, password), 1.0, args.concurrency)
        log(f"sessions/s, {args.concurrency} concurrent, {args.rounds} rounds: {list(ports)}")
        cpu = {label: 0.0 for label in pids}
        sessions = {label: 0.0 for label in pids}
        shares: dict[str, list[list[float]]] = {label: [] for label in pids}
        supervisor = {label: 0.0 for label in pids}   # the supervisor's own CPU (workers: 2)

        def runner(label: str, port: int):
            def run() -> float:
                before = cpu_tree(pids[label]) if label in pids else 0.0
                each = worker_cpu(pids[label]) if label in pids else {}
                rate = session_rate(lambda: imap_session(port, user, password), args.seconds,
                                    args.concurrency)
                if label in pids:
                    cpu[label] += cpu_tree(pids[label]) - before
                    sessions[label] += rate * args.seconds
                    after = worker_cpu(pids[label])
                    used = [after.get(w, 0.0) - each[w] for w in each]
                    if pids[label] not in each:
                        supervisor[label] += cpu_tree(pids[label]) - before - sum(used)
                    shares[label].append([u / (sum(used) or 1) for u in used])
                return rate
            return run

        results = interleave(args.rounds, {label: runner(label, port)
                                           for label, port in ports.items()})
        rate = {label: median(values) for label, values in results.items()}
        table = Table(f"IMAP sessions/s, {args.concurrency} concurrent (median of {args.rounds})",
                      ["contender", "sessions/s", "vs direct", "vs 1 worker", "vs nginx, same workers"])
        for label, value in rate.items():
            kind, _, workers = label.partition(" ")
            single = rate.get(f"{kind} w1") if workers else None
            nginx = rate.get(f"nginx {workers}") if kind == "mailproxy" else None
            table.add(label, f"{value:.1f}", ratio(value, rate["direct"]),
                      ratio(value, single) if single else "-", ratio(value, nginx) if nginx else "-")
        print(table.render())
        for label in pids:
            print(f"{label}: {1000 * cpu[label] / sessions[label]:.2f} ms of proxy CPU per session "
                  f"(supervisor and workers; the supervisor alone "
                  f"{1000 * supervisor[label] / sessions[label]:.2f}); each worker's share of the "
                  f"workers' CPU per round: "
                  + ", ".join("/".join(f"{x:.0%}" for x in r) for r in shares[label]))
        print("rounds:", {label: [round(v, 1) for v in values] for label, values in results.items()})


if __name__ == "__main__":
    main()
