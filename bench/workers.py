"""Workers benchmark: IMAP sessions/s (LOGIN, SELECT, LOGOUT on a new connection, 16 concurrent
clients) through mailproxy with `workers: 1` and `workers: 2`, and through nginx's mail proxy with
`worker_processes 1` and `2`, beside Dovecot direct, interleaved in one run.

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
        for workers in (1, 2):
            proxy = env.proxy(listener, extra={"workers": workers})
            ports[f"mailproxy w{workers}"] = proxy.port("imap")
        if args.nginx and nginxmail.available():
            for workers in (1, 2):
                ng = nginxmail.NginxMail(env.root / f"nginx{workers}", env.dovecot.imap_port,
                                         env.dovecot.pop3_port, workers=workers)
                env.on_close(ng.stop)
                ports[f"nginx w{workers}"] = ng.imap_port
        for port in ports.values():   # warm-up: every worker's code paths, Dovecot's indexes
            session_rate(lambda p=port: imap_session(p, user, password), 1.0, args.concurrency)
        log(f"sessions/s, {args.concurrency} concurrent, {args.rounds} rounds: {list(ports)}")
        results = interleave(args.rounds, {
            label: (lambda p=port: session_rate(lambda: imap_session(p, user, password),
                                                args.seconds, args.concurrency))
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
        print("rounds:", {label: [round(v, 1) for v in values] for label, values in results.items()})


if __name__ == "__main__":
    main()
