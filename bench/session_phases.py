"""Client-side time of each phase of an IMAP session (greeting, LOGIN, SELECT INBOX, LOGOUT), direct
and through two proxies (this tree and a base revision), in one run.

    .venv/bin/python bench/session_phases.py [--base REV] [--rounds 6] [--sessions 50]

Each round runs `--sessions` sessions on new connections per path, the paths interleaved
(direct, base, this, direct, ...), with bench/clients.py's raw-socket client: the greeting is
timed from connect() to the greeting's line, each command from its send to its tagged OK (LOGOUT:
to the tagged OK, as a client that closes then). Prints the median of each phase per path (us)
and the proxies' CPU per session from /proc. Wall-clock figures move with the machine's load;
compare the paths of one run. Needs root, like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ab_relay import export, proxy_from  # noqa: E402
from clients import Imap  # noqa: E402
from common import Env, cpu_seconds, median, small_mailbox  # noqa: E402

PHASES = ("greeting", "LOGIN", "SELECT", "LOGOUT")


def session(port: int, user: str, password: str) -> tuple[float, ...]:
    t0 = time.perf_counter()
    imap = Imap(port)
    t1 = time.perf_counter()
    imap.login(user, password)
    t2 = time.perf_counter()
    imap.command(b"SELECT INBOX")
    t3 = time.perf_counter()
    imap.command(b"LOGOUT")
    t4 = time.perf_counter()
    imap.close()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=50)
    args = parser.parse_args()
    with Env("phases") as env:
        user, password = env.user_with(small_mailbox())
        listeners = [{"name": "imap", "protocol": "imap"}]
        base = proxy_from(env, export(args.base), listeners)
        this = proxy_from(env, None, listeners)
        paths = {"direct": (env.dovecot.imap_port, None), f"base {args.base}": (
            base.port("imap"), base.pid), "this": (this.port("imap"), this.pid)}
        for port, _ in paths.values():   # warm-up
            session(port, user, password)
        samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, (port, pid) in paths.items():
                c0 = cpu_seconds(pid) if pid else 0.0
                samples[name] += [session(port, user, password) for _ in range(args.sessions)]
                if pid:
                    cpu[name].append((cpu_seconds(pid) - c0) / args.sessions * 1e3)
        print(f"| path | {' | '.join(PHASES)} | session | proxy CPU ms/session |")
        print("|---" * (len(PHASES) + 3) + "|")
        for name, rows in samples.items():
            phases = [median([row[i] for row in rows]) * 1e6 for i in range(len(PHASES))]
            total = median([sum(row) for row in rows]) * 1e6
            proxy_cpu = f"{median(cpu[name]):.2f}" if cpu[name] else "-"
            print(f"| {name} | {' | '.join(f'{p:,.0f}' for p in phases)} | {total:,.0f} | "
                  f"{proxy_cpu} |")


if __name__ == "__main__":
    main()
