"""Proxy CPU per relayed session, this tree against a baseline tree, in one run (issue 16).

    .venv/bin/python bench/session_cost.py --baseline DIR [--sessions 300] [--rounds 5]
    git archive main | tar -x -C /tmp/base    # one way to get a baseline tree

Two mailproxy processes (the baseline's code from DIR, this tree's code) relay to one private
Dovecot; nginx's mail proxy is the third contender when installed. Rounds are interleaved
(baseline, this, nginx, baseline, ...): each round runs `--sessions` IMAP sessions (connect,
LOGIN, SELECT INBOX, LOGOUT) one after the other, then `--sessions` more from 16 threads. For
each proxy the table gives its user+system CPU from /proc divided by the sessions of the round
(median over rounds; the CPU is the least load-sensitive figure on a shared machine), and the
sessions/s of each contender. The load average is printed at the start and the end.
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
from clients import imap_session
from common import Env, QuietProxyProcess, median, small_mailbox


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_proxy(env: Env, tree: pathlib.Path) -> QuietProxyProcess:
    """A proxy whose `proxy` package is the baseline tree's (first on sys.path)."""
    proc = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=True)
    proc.stop()   # only its config and ports were wanted; start the baseline code on them
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.argv[0] = 'mailproxy'; "
            "from proxy.cli import main; sys.exit(main())")
    command = [sys.executable, "-c", code, "--log-format", "text", "--log-level",
               common.PROXY_LOG_LEVEL, "serve", "--config", str(proc.config_path)]
    base = QuietProxyProcess(proc.config, proc.tmp_path / "baseline", command=command)
    env.on_close(base.stop)
    return base


def run_sessions(port: int, user: str, password: str, count: int, threads: int) -> float:
    """`count` sessions over `threads` threads; sessions per second."""
    if threads == 1:
        t0 = time.perf_counter()
        for _ in range(count):
            imap_session(port, user, password)
        return count / (time.perf_counter() - t0)
    per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(n):
                imap_session(port, user, password)
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
    args = parser.parse_args()
    print(f"session cost A/B, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average "
          f"{os.getloadavg()[0]:.2f}, {args.sessions} sessions x {args.rounds} rounds")
    with Env("session-cost") as env:
        user, password = env.user_with(small_mailbox(10))
        this = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=True)
        base = baseline_proxy(env, args.baseline.resolve())
        ports = {"baseline": base.port("imap"), "this": this.port("imap")}
        pids = {"baseline": base.pid, "this": this.pid}
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port)
            env.on_close(ng.stop)
            ports["nginx"] = ng.imap_port
        for port in ports.values():
            for _ in range(20):
                imap_session(port, user, password)
        rates: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for threads in (1, 16):
                for label, port in ports.items():
                    c0 = cpu_seconds(pids[label]) if label in pids else 0.0
                    rate = run_sessions(port, user, password, args.sessions, threads)
                    rates.setdefault((label, threads), []).append(rate)
                    if label in pids:
                        cpu.setdefault((label, threads), []).append(
                            (cpu_seconds(pids[label]) - c0) / args.sessions * 1e3)
    print("| contender | sessions/s seq | sessions/s 16 conc | CPU ms/session seq | "
          "CPU ms/session 16 conc |")
    print("|---|---|---|---|---|")
    for label in ports:
        cells = [f"{median(rates[label, t]):.1f}" for t in (1, 16)]
        cells += [f"{median(cpu[label, t]):.2f}" if label in pids else "-" for t in (1, 16)]
        print(f"| {label} | " + " | ".join(cells) + " |")
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
