"""System calls per relayed IMAP session: mailproxy against nginx's mail proxy (issue 16).

    .venv/bin/python bench/syscalls.py [--sessions 200] [--protocol imap|pop3]

Each contender relays to one private Dovecot; `strace -c -f` is attached to the proxy process
(for nginx: its worker) while `--sessions` sessions run one after the other (IMAP: connect,
LOGIN, SELECT INBOX, LOGOUT; POP3: USER/PASS, STAT, QUIT), after a warm-up. Printed: the calls
per session by name for each contender, side by side. Not a speed figure: strace slows every
call down; what it counts does not depend on the load.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import nginxmail  # noqa: E402
from clients import Pop3, imap_session  # noqa: E402
from common import Env, small_mailbox  # noqa: E402

ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(?P<calls>\d+)\s+(?:\d+\s+)?(?P<name>\w+)$")


def pop3_session(port: int, user: str, password: str) -> None:
    pop = Pop3(port)
    pop.command(b"USER " + user.encode())
    pop.command(b"PASS " + password.encode())
    pop.command(b"STAT")
    pop.command(b"QUIT")
    pop.sock.close()


def count(pid: int, out: pathlib.Path, work) -> dict[str, int]:
    """Calls by name made by `pid` (all its threads) while `work()` runs."""
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)   # strace attaches asynchronously; nothing runs meanwhile
    work()
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=60)
    calls = {}
    for line in out.read_text().splitlines():
        m = ROW.match(line)
        if m and m["name"] != "total":
            calls[m["name"]] = int(m["calls"])
    return calls


def nginx_worker(directory: pathlib.Path) -> int:
    master = int((directory / "nginx.pid").read_text().split()[0])
    children = pathlib.Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--protocol", choices=("imap", "pop3"), default="imap")
    args = parser.parse_args()
    session = imap_session if args.protocol == "imap" else pop3_session
    with Env("syscalls") as env:
        user, password = env.user_with(small_mailbox(10))
        proxy = env.proxy([{"name": args.protocol, "protocol": args.protocol}], metrics=True)
        targets = {"mailproxy": (proxy.port(args.protocol), proxy.pid)}
        if nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port)
            env.on_close(ng.stop)
            port = ng.imap_port if args.protocol == "imap" else ng.pop3_port
            targets["nginx"] = (port, nginx_worker(env.root / "nginx"))
        results = {}
        for label, (port, pid) in targets.items():
            for _ in range(20):
                session(port, user, password)
            results[label] = count(pid, env.root / f"strace-{label}.txt",
                                   lambda port=port: [session(port, user, password)
                                                      for _ in range(args.sessions)])
        names = sorted({n for calls in results.values() for n in calls},
                       key=lambda n: -results["mailproxy"].get(n, 0))
        print(f"{args.protocol}: system calls per session ({args.sessions} sessions, "
              f"load {os.getloadavg()[0]:.1f})")
        print(f"{'call':<20}" + "".join(f"{label:>12}" for label in results))
        for name in names + ["total"]:
            cells = [(sum(calls.values()) if name == "total" else calls.get(name, 0)) / args.sessions
                     for calls in results.values()]
            print(f"{name:<20}" + "".join(f"{c:>12.2f}" for c in cells))


if __name__ == "__main__":
    main()
