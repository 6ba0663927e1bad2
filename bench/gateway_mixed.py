"""Benchmark: the mixed multi-session load of issue 13 on one account, served by Dovecot IMAP
directly and by the gateway (a `mailproxy serve` subprocess, SQLite store, Dovecot POP3 upstream),
with and without `key_file`, in interleaved rounds.

The load is the stress tester's (tests/gateway_imapd/stress/): `--sessions` sessions each issue a
seeded random mix of APPEND, FETCH, STORE, EXPUNGE, SEARCH, their UID forms, NOOP, IDLE and
pipelined groups as fast as answers come, for `--seconds` per round; every response is checked
too (a round that finds protocol errors says so). Reported per contender: IMAP commands/s (all,
and by command), p50/p99 latency per command (send to tagged reply; pipelined commands count
from the send of their group), medians over rounds, and the gateway/Dovecot ratio.

Run: .venv/bin/python bench/gateway_mixed.py [--sessions 10] [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import collections
import os
import statistics
import subprocess
import sys

from common import Env, QuietProxyProcess, Table, cpu_seconds, median, percentile, ratio  # noqa: E402
from gateway_imapd.stress.model import Shared  # noqa: E402 (tests/ is on sys.path)
from gateway_imapd.stress.run import Target, run_stress  # noqa: E402

from support.proxyproc import relay_config  # noqa: E402


def gateway(env: Env, name: str, key_file: bool) -> QuietProxyProcess:
    cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True,
                       max_connections_per_ip=100000)
    cfg["listeners"][0]["mode"] = "gateway"
    cfg.pop("metrics", None)
    store_dir = env.root / name
    store_dir.mkdir()
    cfg["gateway"] = {"store": str(store_dir / "gateway.db"), "poll_interval": "600s"}
    if key_file:
        path = store_dir / "store.key"
        path.write_text("k1:" + base64.b64encode(os.urandom(32)).decode() + "\n")
        path.chmod(0o600)
        cfg["gateway"]["key_file"] = str(path)
    proc = QuietProxyProcess(cfg, env.root / f"{name}-proc", extra_args=["--log-level", "WARNING"])
    env.on_close(proc.stop)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy (GIL holders only) the gateway (no key_file) during its first "
                             "round: collapsed stacks to FILE (needs `pip install py-spy`)")
    parser.add_argument("--only", choices=["dovecot", "gateway", "gateway+key_file"], action="append",
                        help="run only these contenders (default: all three)")
    args = parser.parse_args()
    with Env("gateway-mixed") as env:
        only = set(args.only or ["dovecot", "gateway", "gateway+key_file"])
        targets: dict[str, Target] = {}
        pids: dict[str, int] = {}
        user, password = env.dovecot.add_user()
        targets["dovecot"] = Target("127.0.0.1", env.dovecot.imap_port, user, password)
        pids["dovecot"] = env.dovecot.master_pid
        for label, key_file in (("gateway", False), ("gateway+key_file", True)):
            if label not in only:
                continue
            proc = gateway(env, label, key_file)
            pids[label] = proc.pid
            user, password = env.dovecot.add_user()
            targets[label] = Target("127.0.0.1", proc.port("imap"), user, password)
        targets = {k: v for k, v in targets.items() if k in only}
        results: dict[str, list] = {label: [] for label in targets}
        shared = {label: Shared() for label in targets}   # bodies appended in earlier rounds
        for round_no in range(args.rounds):
            for label, target in targets.items():
                spy = None
                if args.profile and label == "gateway" and round_no == 0:
                    spy = subprocess.Popen(
                        [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--gil",
                         "-p", str(pids[label]), "-d", str(int(args.seconds)), "-f", "raw",
                         "-o", args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu = cpu_seconds(pids[label], children=label == "dovecot")
                result = run_stress(target, sessions=args.sessions, seconds=args.seconds,
                                    round_seconds=args.seconds, seed=args.seed + round_no,
                                    allow_nil=label == "dovecot",   # RFC 2180 4.1.2 (model.py)
                                    shared=shared[label])
                result.cpu = cpu_seconds(pids[label], children=label == "dovecot") - cpu
                if spy is not None:
                    spy.wait()
                total = sum(len(v) for v in result.timings.values())
                print(f"round {round_no + 1} {label:17} {total / result.work_seconds:7.0f} "
                      f"commands/s, {len(result.errors)} protocol errors", file=sys.stderr)
                if result.errors:
                    print(result.report(3), file=sys.stderr)
                results[label].append(result)
        report(results, args)


def report(results: dict[str, list], args) -> None:
    labels = list(results)
    rates = {label: [sum(len(v) for v in r.timings.values()) / r.work_seconds for r in runs]
             for label, runs in results.items()}
    per_cpu = {label: [sum(len(v) for v in r.timings.values()) / max(r.cpu, 1e-9) for r in runs]
               for label, runs in results.items()}
    table = Table(f"Mixed load, {args.sessions} sessions on one account, {args.seconds:.0f} s "
                  f"x {args.rounds} rounds: IMAP commands/s (median of rounds)",
                  ["contender", "commands/s", "vs Dovecot", "min..max", "commands per CPU s",
                   "vs Dovecot", "protocol errors"])
    for label in labels:
        errors = sum(len(r.errors) for r in results[label])
        base = median(rates["dovecot"]) if "dovecot" in rates else float("nan")
        cpu_base = median(per_cpu["dovecot"]) if "dovecot" in per_cpu else float("nan")
        table.add(label, median(rates[label]), ratio(median(rates[label]), base),
                  f"{min(rates[label]):.0f}..{max(rates[label]):.0f}", median(per_cpu[label]),
                  ratio(median(per_cpu[label]), cpu_base), errors)
    print(table.render())
    verbs = collections.Counter()
    for runs in results.values():
        for r in runs:
            verbs.update({k: len(v) for k, v in r.timings.items()})
    columns = ["command"]
    for label in labels:
        columns += [f"{label} /s", "p50 ms", "p99 ms"]
    per = Table("Per command: rate (median of rounds) and latency (all rounds pooled)", columns)
    for name, _ in verbs.most_common():
        row: list = [name]
        for label in labels:
            runs = results[label]
            rate = statistics.median(len(r.timings.get(name, ())) / r.work_seconds for r in runs)
            pooled = sorted(t for r in runs for t in r.timings.get(name, ()))
            row += [rate, percentile(pooled, 0.5) * 1000, percentile(pooled, 0.99) * 1000]
        per.add(*row)
    print(per.render())


if __name__ == "__main__":
    main()
