"""Benchmark: the cost of learning each writing store call's transaction id before its COMMIT
(proxy/store/_pg_commit.py), against a base revision without it, on a throwaway PostgreSQL
cluster.

Each tree runs in a process of its own (this tree, and `--base REV` exported with `git
archive`), with its own PostgresStore on its own schema; both make the same writing call
(`record_sync`: one UPDATE) N times per round, rounds interleaved. Reported per call: the
client process's CPU (all its threads, /proc), the database server's CPU (the postmaster and
every backend, /proc) and the wall time; medians of the rounds.

Run: .venv/bin/python bench/store_commit.py [--calls 2000] [--rounds 5] [--base 06750a1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import REPO_ROOT, Table, cpu_seconds, median  # noqa: E402
from gateway_fairness import export  # noqa: E402

from support.postgres import postmaster_pid, start_postgres  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import trio
from proxy.store.postgres import open_postgres

async def main():
    store = await open_postgres(sys.argv[2], pool_size=2)
    account = await store.ensure_account("bench", "user")
    print("ready", flush=True)
    while sys.stdin.readline():
        calls = int(sys.argv[3])
        started = time.perf_counter()
        for _ in range(calls):
            await store.record_sync(account.id, None)
        print(json.dumps(time.perf_counter() - started), flush=True)
    await store.close()

trio.run(main)
"""


def server_cpu(data) -> float:
    """CPU seconds of the cluster's postmaster and its live children."""
    master = postmaster_pid(data)
    assert master is not None
    return cpu_seconds(master, children=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", default="06750a1")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="mailproxy-store-commit-")
    os.chmod(root, 0o755)
    import pathlib

    server = start_postgres(pathlib.Path(root))
    trees = {"this tree": REPO_ROOT, args.base: export(args.base)}
    children: dict[str, subprocess.Popen] = {}
    try:
        for label, tree in trees.items():
            children[label] = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(tree), server.fresh_dsn(), str(args.calls)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert children[label].stdout.readline().strip() == "ready"
        figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label in trees}
        for _ in range(args.rounds):
            for label, child in children.items():
                cpu, db = cpu_seconds(child.pid), server_cpu(server.data)
                child.stdin.write("go\n")
                child.stdin.flush()
                wall = json.loads(child.stdout.readline())
                figures[label].append((cpu_seconds(child.pid) - cpu,
                                       server_cpu(server.data) - db, wall))
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        table = Table(f"A writing store call (record_sync), {args.calls} calls x {args.rounds} "
                      "rounds interleaved: per call, medians of the rounds (us)",
                      ["tree", "client CPU", "server CPU", "wall"])
        for label, rows in figures.items():
            table.add(label, *(median([r[i] for r in rows]) / args.calls * 1e6 for i in range(3)))
        print(table.render())
    finally:
        for child in children.values():
            if child.poll() is None:
                child.stdin.close()
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        server.stop()
        import shutil

        shutil.rmtree(trees[args.base], ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
