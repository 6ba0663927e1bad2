"""The relay engine thread's CPU per MB of POP3 download against bulk IMAP FETCH (issue 16).

    .venv/bin/python bench/relay_thread_cost.py [--messages 2000] [--rounds 3] [--strace]

One proxy (metrics on, as shipped) relays POP3 and IMAP to one private Dovecot holding the bench
mailbox. Rounds alternate a POP3 download (USER/PASS, STAT, UIDL, RETR of every message one round
trip each, QUIT) and `UID FETCH 1:* BODY.PEEK[]` of the same messages; around each, the user and
system CPU of every thread of the proxy is read from /proc/PID/task/*/stat, and printed per MB
of bodies. The engine thread carries the relayed bytes, so its user time (Python) and system
time (the reads, writes and epoll waits with their loopback TCP work) say where a RETR's cost
goes beyond a FETCH's per-byte cost: the difference per message is what each round trip costs.
`--strace`: the engine thread's reads, writes and epoll_waits during one more download, per RETR
(counts and the median read size). The CPU figures are tick-sampled (10 ms): use a mailbox of
1,000 messages or more. Needs root, like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from clients import Imap, pop3_download  # noqa: E402
from common import Env, make_mailbox  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
CALL = re.compile(r"^(?P<tid>\d+)\s+(?P<name>read|write|epoll_wait)\((?P<fd>\d+),.*= (?P<ret>-?\d+)")


def thread_cpu(pid: int) -> dict[int, tuple[int, int]]:
    """utime and stime ticks of every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:   # (a thread that ended meanwhile)
            continue
        out[int(tid)] = (int(fields[11]), int(fields[12]))
    return out


def fetch_all(port: int, user: str, password: str) -> int:
    imap = Imap(port)
    imap.login(user, password)
    imap.command(b"SELECT INBOX")
    _, total, _ = imap.fetch_all()
    imap.logout()
    return total


def strace_download(pid: int, port: int, user: str, password: str) -> None:
    out = pathlib.Path(f"/tmp/relay-thread-cost-{os.getpid()}.strace")
    tracer = subprocess.Popen(["strace", "-f", "-e", "trace=read,write,epoll_wait", "-e",
                               "abbrev=all", "-s", "0", "-o", str(out), "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)   # strace attaches asynchronously
    try:
        count = pop3_download(port, user, password)[0]
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
    calls: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reads: dict[tuple[int, int], list[int]] = collections.defaultdict(list)   # (tid, fd)
    for line in out.read_text().splitlines():
        m = CALL.match(line)
        if m:
            tid = int(m["tid"])
            calls[tid][m["name"]] += 1
            if m["name"] == "read" and int(m["ret"]) > 0:
                reads[tid, int(m["fd"])].append(int(m["ret"]))
    out.unlink()
    engine = max(calls, key=lambda t: sum(calls[t].values()))
    per = ", ".join(f"{name} {n / count:.2f}" for name, n in sorted(calls[engine].items()))
    upstream = max((key for key in reads if key[0] == engine), key=lambda k: sum(reads[k]))
    print(f"engine thread, system calls per RETR ({count} messages): {per}; reads of the "
          f"upstream: {len(reads[upstream]) / count:.2f} per RETR, median "
          f"{statistics.median(reads[upstream]):.0f} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strace", action="store_true")
    args = parser.parse_args()
    with Env("thread-cost") as env:
        user, password = env.user_with(make_mailbox(args.messages))
        proxy = env.proxy([{"name": "imap", "protocol": "imap"},
                           {"name": "pop3", "protocol": "pop3"}], metrics=True)
        pid, pop3_port, imap_port = proxy.pid, proxy.port("pop3"), proxy.port("imap")
        workloads = {"POP3 RETR": lambda: pop3_download(pop3_port, user, password)[1],
                     "IMAP FETCH": lambda: fetch_all(imap_port, user, password)}
        for run in workloads.values():   # warm-up: Dovecot's indexes, the page cache
            run()
        results: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for name, run in workloads.items():
                before = thread_cpu(pid)
                megabytes = run() / 1e6
                after = thread_cpu(pid)
                engine = max(after, key=lambda t: sum(after[t]) - sum(before.get(t, (0, 0))))
                user_ticks, sys_ticks = (a - b for a, b in zip(after[engine],
                                                               before.get(engine, (0, 0)),
                                                               strict=True))
                results[name].append((user_ticks * 1e3 / TICK / megabytes,
                                      sys_ticks * 1e3 / TICK / megabytes))
        print(f"load average {os.getloadavg()[0]:.1f}; {args.messages} messages; "
              f"busiest thread's CPU per MB, median of {args.rounds} rounds (ms)")
        for name, rows in results.items():
            user_ms = statistics.median(r[0] for r in rows)
            sys_ms = statistics.median(r[1] for r in rows)
            print(f"  {name:10s}  user {user_ms:5.2f}  system {sys_ms:5.2f}  "
                  f"total {user_ms + sys_ms:5.2f}")
        if args.strace:
            strace_download(pid, pop3_port, user, password)


if __name__ == "__main__":
    main()
