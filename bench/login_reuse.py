"""Issue 16's first row with upstream connection reuse: sequential IMAP sessions/s through
mailproxy with `upstreams.main.imap.reuse` on and off, beside nginx's mail proxy and direct
Dovecot, interleaved in one run; CPU per session of each mailproxy from /proc.

    .venv/bin/python bench/login_reuse.py [--rounds 7] [--seconds 1.5] [--concurrent 16] [--no-nginx]

Each session is LOGIN + SELECT INBOX + LOGOUT on a new connection, one user (the shape of
bench/relay.py's sequential row); with --concurrent N (0: off) also N threads at once, each with
a user of its own (several clients of one user would share at most 4 parked connections). With
reuse on, a session's LOGOUT is answered by the proxy, its upstream connection gets UNSELECT and
is parked; the next LOGIN takes it (no upstream login). The Dovecot login count of each proxy's
user is printed as the check that reuse happened.
See bench/README.md, "Issue 16: opt-in reuse of authenticated upstream connections".
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import threading
import time

import nginxmail
from clients import imap_session
from common import Env, Table, interleave, median, ratio, small_mailbox
from relay import cpu_seconds, sessions_runner, spread


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one round (1.5)")
    parser.add_argument("--concurrent", type=int, default=16, help="threads of the concurrent "
                        "row, a user each (16; 0: no such row)")
    parser.add_argument("--no-nginx", dest="nginx", action="store_false")
    args = parser.parse_args()
    with Env("reuse") as env:
        names = ("direct", "nginx", "reuse off", "reuse on")
        users = {name: env.user_with(small_mailbox(10)) for name in names}
        crowd = {name: [env.user_with(small_mailbox(10)) for _ in range(args.concurrent)]
                 for name in names}
        off = env.proxy([{"name": "imap", "protocol": "imap"}])
        upstream = {"host": "127.0.0.1", "imap": {"port": env.dovecot.imap_port, "tls": "none",
                                                   "reuse": {"max_age": "60s"}},
                    "pop3": {"port": env.dovecot.pop3_port, "tls": "none"}}
        on = env.proxy([{"name": "imap", "protocol": "imap"}],
                       extra={"upstreams": {"main": upstream}})
        ports = {"direct": env.dovecot.imap_port, "reuse off": off.port("imap"),
                 "reuse on": on.port("imap")}
        pids = {"reuse off": off.pid, "reuse on": on.pid}
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port,
                                     env.dovecot.pop3_port)
            env.on_close(ng.stop)
            ports["nginx"] = ng.imap_port
        for label, port in ports.items():   # warm-up (the engine learns the greeting)
            for _ in range(3):
                imap_session(port, *users[label])
        cpu: dict[str, list[float]] = {label: [] for label in pids}

        def metered(label: str, rate, sink: dict[str, list[float]]):
            """`rate` (a round's sessions/s), also putting the proxy's ms of CPU per session
            of the round in `sink[label]` (mailproxy only: nginx and direct have no pid)."""
            if label not in pids:
                return rate

            def measured() -> float:
                before, started = cpu_seconds(pids[label]), time.perf_counter()
                value = rate()
                wall = time.perf_counter() - started
                sink[label].append((cpu_seconds(pids[label]) - before) / (value * wall) * 1e3)
                return value
            return measured

        def runner(label: str, port: int):
            return metered(label, sessions_runner(lambda: imap_session(port, *users[label]),
                                                  args.seconds, 1), cpu)

        log(f"sequential sessions, {args.rounds} rounds of {args.seconds}s: {list(ports)}")
        out = interleave(args.rounds, {label: runner(label, port) for label, port in ports.items()})
        report("sequential", out, cpu, ports, args)
        log_text = env.dovecot.log()
        for label in ports:
            logins = len(re.findall(rf"imap-login: Info: Login: user=<{re.escape(users[label][0])}>",
                                    log_text))
            sessions = 3 + sum(round(r * args.seconds) for r in out[label])
            print(f"{label}: ~{sessions} sessions, {logins} Dovecot logins")
        if not args.concurrent:
            return

        def crowd_runner(label: str, port: int):
            local, serial = threading.local(), itertools.count()

            def one() -> None:
                if not hasattr(local, "user"):
                    local.user = crowd[label][next(serial) % args.concurrent]
                imap_session(port, *local.user)
            return metered(label, sessions_runner(one, args.seconds, args.concurrent), ccpu)

        ccpu: dict[str, list[float]] = {label: [] for label in pids}
        log(f"{args.concurrent} concurrent sessions, a user each")
        out = interleave(args.rounds, {label: crowd_runner(label, port)
                                       for label, port in ports.items()})
        report(f"{args.concurrent} concurrent (a user each)", out, ccpu, ports, args)


def report(what: str, out: dict, cpu: dict, ports: dict, args) -> None:
    rates = {label: median(values) for label, values in out.items()}
    table = Table(f"IMAP sessions/s {what} (LOGIN+SELECT+LOGOUT), median of {args.rounds} "
                  "interleaved rounds", ["contender", "sessions/s", "/direct", "/nginx",
                                         "CPU ms/session"])
    for label in ports:
        table.add(label, rates[label], ratio(rates[label], rates["direct"]),
                  ratio(rates[label], rates.get("nginx", float("nan"))),
                  median(cpu[label]) if label in cpu else float("nan"))
    print(table.render())
    print("rounds: " + "; ".join(f"{k} {spread(v)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
