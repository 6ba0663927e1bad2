"""Benchmark (issue 15): change propagation between gateway processes on one PostgreSQL store.

Two `mailproxy serve` processes (A and B) share a private PostgreSQL cluster. N sessions on B
SELECT INBOX and IDLE; a session on A STOREs a flag; the time from sending the STORE to each
IDLE session on B receiving its untagged FETCH, p50/p99/max (target p99 < 100 ms). For
comparison, the same with the IDLE sessions on A itself (in-process hub), and on one process
with an SQLite store.

Run: .venv/bin/python bench/replicas.py [--sessions 10 100] [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics

from common import Env, QuietProxyProcess, make_mailbox  # noqa: E402 (puts tests/ on sys.path)
from propagation import measure_between

from support.postgres import start_postgres


def gateway(env: Env, store: str, name: str) -> QuietProxyProcess:
    config = {
        "listeners": [{"name": "gw", "protocol": "imap", "mode": "gateway", "tls": "none",
                       "address": "127.0.0.1:0", "allow_plaintext_auth": True,
                       "max_connections_per_ip": 100000}],
        "upstreams": {"main": {"host": "127.0.0.1",
                               "pop3": {"port": env.dovecot.pop3_port, "tls": "none"}}},
        "routes": [{"match": "*", "upstream": "main"}],
        "gateway": {"store": store, "poll_interval": "600s"},
    }
    proc = QuietProxyProcess(config, env.root / name, extra_args=["--log-level", "WARNING"])
    env.on_close(proc.stop)
    return proc


def report(label: str, count: int, samples: list[float]) -> None:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{label:<28} {count:8d} {len(samples):8d} {statistics.median(samples) * 1e3:8.2f} "
          f"{p99 * 1e3:8.2f} {samples[-1] * 1e3:8.2f}", flush=True)


def main(counts: list[int], rounds: int) -> None:
    env = Env("replicas")
    try:
        postgres = start_postgres(env.root)
        env.on_close(postgres.stop)
        url = postgres.fresh_dsn()
        user, password = env.user_with(make_mailbox(20))
        a, b = gateway(env, url, "a"), gateway(env, url, "b")
        lite = gateway(env, str(env.root / "gateway.db"), "sqlite")
        print(f"{'setup':<28} {'sessions':>8} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8}")
        for count in counts:
            report("PostgreSQL, A -> B", count, measure_between(
                a.port("gw"), b.port("gw"), user, password, count, rounds))
            report("PostgreSQL, A -> A", count, measure_between(
                a.port("gw"), a.port("gw"), user, password, count, rounds))
            report("SQLite, one process", count, measure_between(
                lite.port("gw"), lite.port("gw"), user, password, count, rounds))
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    main(args.sessions, args.rounds)
