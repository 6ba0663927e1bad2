"""Benchmark (issue 15): change propagation between gateway processes on one PostgreSQL store.

Two `mailproxy serve` processes (A and B) share a private PostgreSQL cluster. N sessions on B
SELECT INBOX and IDLE; a session on A STOREs a flag; the time from sending the STORE to each
IDLE session on B receiving its untagged FETCH, p50/p99/max (target p99 < 100 ms). For
comparison, the same with the IDLE sessions on A itself (in-process hub), and on one process
with an SQLite store.

With `--baseline DIR` (a tree of older code, e.g. `git archive main | tar -x -C DIR`), a third
process B' runs the baseline's code on the same database, and A -> B and A -> B' are measured in
interleaved rounds; for both, the CPU the IDLE process used (user+system from /proc) per FETCH
it delivered, the figure least moved by the machine's load. The load average is printed.

Run: .venv/bin/python bench/replicas.py [--sessions 10 100] [--rounds 40] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys

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


def baseline_gateway(env: Env, store: str, tree: pathlib.Path) -> QuietProxyProcess:
    """A gateway process whose `proxy` package is the baseline tree's (first on sys.path)."""
    proc = gateway(env, store, "base-config")
    proc.stop()   # only its config and ports were wanted; start the baseline code on them
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.argv[0] = 'mailproxy'; "
            "from proxy.cli import main; sys.exit(main())")
    command = [sys.executable, "-c", code, "--log-format", "text", "--log-level", "WARNING",
               "serve", "--config", str(proc.config_path)]
    base = QuietProxyProcess(proc.config, proc.tmp_path / "baseline", command=command)
    env.on_close(base.stop)
    return base


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return open("/proc/loadavg").read().split()[0]


def report(label: str, count: int, samples: list[float], cpu_us: float | None = None) -> None:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    cpu = f" {cpu_us:10.1f}" if cpu_us is not None else ""
    print(f"{label:<28} {count:8d} {len(samples):8d} {statistics.median(samples) * 1e3:8.2f} "
          f"{p99 * 1e3:8.2f} {samples[-1] * 1e3:8.2f}{cpu}", flush=True)


def compare(a: QuietProxyProcess, contenders: dict[str, QuietProxyProcess], user: str,
            password: str, count: int, rounds: int, blocks: int = 5) -> None:
    """A -> each contender, in `blocks` interleaved blocks of `rounds // blocks` rounds; the
    contender's CPU per delivered FETCH over all its blocks."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, float] = dict.fromkeys(contenders, 0.0)
    for _ in range(blocks):
        for name, proc in contenders.items():
            marks: list[float] = []
            got = measure_between(a.port("gw"), proc.port("gw"), user, password, count,
                                  max(1, rounds // blocks),
                                  lambda pid=proc.pid, marks=marks: marks.append(cpu_seconds(pid)))
            cpu[name] += marks[1] - marks[0]
            samples[name] += got
    for name, got in samples.items():
        report(f"PostgreSQL, A -> {name}", count, got, cpu[name] / len(got) * 1e6)


def main(counts: list[int], rounds: int, baseline: pathlib.Path | None) -> None:
    env = Env("replicas")
    try:
        print(f"load average {loadavg()} at the start", flush=True)
        postgres = start_postgres(env.root)
        env.on_close(postgres.stop)
        url = postgres.fresh_dsn()
        user, password = env.user_with(make_mailbox(20))
        a, b = gateway(env, url, "a"), gateway(env, url, "b")
        print(f"{'setup':<28} {'sessions':>8} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8}" + (f" {'CPU us/FETCH':>10}" if baseline else ""))
        if baseline is not None:
            base = baseline_gateway(env, url, baseline.resolve())
            for count in counts:
                compare(a, {"B (this tree)": b, "B' (baseline)": base}, user, password, count,
                        rounds)
            print(f"load average {loadavg()} at the end", flush=True)
            return
        lite = gateway(env, str(env.root / "gateway.db"), "sqlite")
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
    parser.add_argument("--baseline", type=pathlib.Path, default=None)
    args = parser.parse_args()
    main(args.sessions, args.rounds, args.baseline)
