"""Lookup benchmark: sessions/s with the `http` lookup (nginx auth_http) vs static routes vs
nginx's mail proxy asking the same auth service, interleaved in one run.

    .venv/bin/python bench/lookup.py [--seconds 5] [--rounds 3] [--concurrency 4] [--users 200]

One Dovecot, `--users` accounts. Contenders, each an IMAP session (LOGIN, SELECT INBOX, LOGOUT) on a
new connection, users taken round-robin:
  direct          Dovecot itself
  static          mailproxy with `routes: [{match: "*", upstream: main}]`
  lookup-hit      mailproxy with an http lookup whose cache already holds every user
  lookup-miss     mailproxy with an http lookup, cache off (one HTTP request per login)
  nginx           nginx's mail proxy asking the same auth service (it has no cache)
The auth service is tests/support/authservice.py (stdlib ThreadingHTTPServer, one thread per request,
HTTP/1.0: a new TCP connection per request for every client). See bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time

from clients import imap_session, session_rate
from common import Env, Table, interleave, median, ratio, small_mailbox  # puts tests/ on sys.path

from support.authservice import Account, AuthService  # noqa: E402
from support.nginx import NginxMail  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    with Env("lookup") as env:
        mailbox = small_mailbox(5)
        users = [env.user_with(mailbox) for _ in range(args.users)]
        ports = {"imap": env.dovecot.imap_port, "pop3": env.dovecot.pop3_port}
        service = AuthService({u: Account(p, "127.0.0.1", ports) for u, p in users})
        env.on_close(service.stop)
        listener = [{"name": "imap", "protocol": "imap"}]
        static = env.proxy(listener)
        lookup_cfg = {"http": {"url": service.url, "timeout": "5s"}}
        hit = env.proxy(listener, lookups=[lookup_cfg])
        miss = env.proxy(listener, lookups=[{"http": {**lookup_cfg["http"],
                                                       "cache": {"ttl": 0, "negative_ttl": 0}}}])
        nginx = NginxMail(env.root / "nginx", service.url)
        env.on_close(nginx.stop)
        ports_of = {"direct": env.dovecot.imap_port, "static": static.port("imap"),
                    "lookup-hit": hit.port("imap"), "lookup-miss": miss.port("imap"),
                    "nginx": nginx.imap_port}

        def runner(port: int):
            counter = itertools.count()
            lock = threading.Lock()

            def one() -> None:
                with lock:
                    user, password = users[next(counter) % len(users)]
                imap_session(port, user, password)
            return lambda: session_rate(one, args.seconds, args.concurrency)

        for label, port in ports_of.items():  # warm up: every user once (fills lookup-hit's cache)
            log(f"warming {label}")
            for user, password in users:
                imap_session(port, user, password)
        asked_before = len(service.requests)
        results = interleave(args.rounds, {label: runner(port) for label, port in ports_of.items()})
        table = Table(f"IMAP sessions/s (LOGIN+SELECT+LOGOUT), {args.concurrency} clients, "
                      f"{args.users} users, median of {args.rounds} rounds of {args.seconds:g}s",
                      ["path", "sessions/s", "vs static", "vs nginx"])
        for label in ports_of:
            rate = median(results[label])
            table.add(label, rate, ratio(rate, median(results["static"])),
                      ratio(rate, median(results["nginx"])))
        print(table.render())
        print(f"\nauth service requests during the rounds: {len(service.requests) - asked_before}")


if __name__ == "__main__":
    main()
