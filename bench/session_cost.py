"""Proxy CPU per relayed session, this tree against a baseline tree, in one run (issue 16).

    .venv/bin/python bench/session_cost.py --baseline DIR [--sessions 300] [--rounds 5] [--tls]
    git archive main | tar -x -C /tmp/base    # one way to get a baseline tree

Two mailproxy processes (the baseline's code from DIR, this tree's code) relay to one private
Dovecot; nginx's mail proxy is the third contender when installed. Rounds are interleaved
(baseline, this, nginx, baseline, ...): each round runs `--sessions` IMAP sessions (connect,
LOGIN, SELECT INBOX, LOGOUT) one after the other, then `--sessions` more from 16 threads. For
each proxy the table gives its user+system CPU from /proc divided by the sessions of the round
(median over rounds; the CPU is the least load-sensitive figure on a shared machine), and the
sessions/s of each contender, then the CPU per NOOP (2,000 on one logged-in connection per
round). `--tls`: implicit TLS from the client (the same certificate for both proxies and nginx),
relayed in clear to Dovecot. The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import time

import common
import nginxmail
from clients import Imap, client_tls_context, imap_session
from common import Env, QuietProxyProcess, median, small_mailbox, tls_listener


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_proxy(env: Env, tree: pathlib.Path, listener: dict) -> QuietProxyProcess:
    """A proxy whose `proxy` package is the baseline tree's (first on sys.path)."""
    proc = env.proxy([listener], metrics=True)
    proc.stop()   # only its config and ports were wanted; start the baseline code on them
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.argv[0] = 'mailproxy'; "
            "from proxy.cli import main; sys.exit(main())")
    command = [sys.executable, "-c", code, "--log-format", "text", "--log-level",
               common.PROXY_LOG_LEVEL, "serve", "--config", str(proc.config_path)]
    base = QuietProxyProcess(proc.config, proc.tmp_path / "baseline", command=command)
    env.on_close(base.stop)
    return base


def run_sessions(port: int, user: str, password: str, count: int, threads: int, tls=None) -> float:
    """`count` sessions over `threads` threads; sessions per second."""
    if threads == 1:
        t0 = time.perf_counter()
        for _ in range(count):
            imap_session(port, user, password, tls)
        return count / (time.perf_counter() - t0)
    per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(n):
                imap_session(port, user, password, tls)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in per]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=pathlib.Path, required=True)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-nginx", dest="nginx", action="store_false")
    parser.add_argument("--tls", action="store_true", help="implicit TLS from the client")
    parser.add_argument("--noops", type=int, default=2000, help="NOOPs per round (2000)")
    args = parser.parse_args()
    print(f"session cost A/B{' (implicit TLS)' if args.tls else ''}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average "
          f"{os.getloadavg()[0]:.2f}, {args.sessions} sessions x {args.rounds} rounds")
    with Env("session-cost", tls=args.tls) as env:
        user, password = env.user_with(small_mailbox(10))
        listener = tls_listener(env, "imap", "imap") if args.tls else {"name": "imap", "protocol": "imap"}
        tls = client_tls_context(str(env.ca_file)) if args.tls else None
        this = env.proxy([listener], metrics=True)
        base = baseline_proxy(env, args.baseline.resolve(), listener)
        ports = {"baseline": base.port("imap"), "this": this.port("imap")}
        pids = {"baseline": base.pid, "this": this.pid}
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port,
                                     tls=env.cert)
            env.on_close(ng.stop)
            ports["nginx"] = ng.imaps_port if args.tls else ng.imap_port
        for port in ports.values():
            for _ in range(20):
                imap_session(port, user, password, tls)
        rates: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for threads in (1, 16):
                for label, port in ports.items():
                    c0 = cpu_seconds(pids[label]) if label in pids else 0.0
                    rate = run_sessions(port, user, password, args.sessions, threads, tls)
                    rates.setdefault((label, threads), []).append(rate)
                    if label in pids:
                        cpu.setdefault((label, threads), []).append(
                            (cpu_seconds(pids[label]) - c0) / args.sessions * 1e3)
            for label, pid in pids.items():
                client = Imap(ports[label], tls)
                client.login(user, password)
                client.command(b"SELECT INBOX")
                client.noop_rtt_ns(200)
                c0 = cpu_seconds(pid)
                client.noop_rtt_ns(args.noops)
                cpu.setdefault((label, 0), []).append((cpu_seconds(pid) - c0) / args.noops * 1e6)
                client.logout()
    print("| contender | sessions/s seq | sessions/s 16 conc | CPU ms/session seq | "
          "CPU ms/session 16 conc |")
    print("|---|---|---|---|---|")
    for label in ports:
        cells = [f"{median(rates[label, t]):.1f}" for t in (1, 16)]
        cells += [f"{median(cpu[label, t]):.2f}" if label in pids else "-" for t in (1, 16)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label in pids:
        print(f"  {label} CPU per NOOP: {median(cpu[label, 0]):.0f} us (rounds "
              + " ".join(f"{v:.0f}" for v in cpu[label, 0]) + ")")
    for label in pids:
        print(f"  {label} CPU ms/session rounds: seq "
              + " ".join(f"{v:.2f}" for v in cpu[label, 1]) + "; conc "
              + " ".join(f"{v:.2f}" for v in cpu[label, 16]))
    for t in (1, 16):
        print(f"  ratio this/nginx ({t} thread{'s' if t > 1 else ''}): "
              + (f"{median(rates['this', t]) / median(rates['nginx', t]):.2f}x"
                 if "nginx" in ports else "-")
              + "; baseline/nginx: "
              + (f"{median(rates['baseline', t]) / median(rates['nginx', t]):.2f}x"
                 if "nginx" in ports else "-"))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
