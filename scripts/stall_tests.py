"""Run pytest while stalling its processes at random: a way to find tests whose outcome depends
on timing, before a loaded CI machine does.

Every 1-3 s one process of the pytest's tree (pytest itself, with its fake servers' threads, or
a proxy it started) is stopped with SIGSTOP for 0.8-1.5 s, then continued: what a 2-core
machine at load 20 does to a process now and then. A test that fails under it waits for time
(a fixed timeout, a window it must hit) rather than for a condition. Daemons that detach
(Dovecot, PostgreSQL) are not in the tree and never stalled.

    PYTHONPATH=. .venv/bin/python scripts/stall_tests.py tests/integration/test_x.py [pytest args]

SEED=n makes the stall schedule repeatable (the tests' own timing still varies).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def main(args: list[str]) -> int:
    rng = random.Random(int(os.environ.get("SEED", "0")) or None)
    pytest = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *args])
    stalls = 0
    while pytest.poll() is None:
        time.sleep(rng.uniform(1, 3))
        victim = rng.choice(_tree(pytest.pid))
        try:
            os.kill(victim, signal.SIGSTOP)
            try:
                time.sleep(rng.uniform(0.8, 1.5))
            finally:
                os.kill(victim, signal.SIGCONT)
            stalls += 1
        except ProcessLookupError:
            pass
    print(f"stall_tests: {stalls} stalls, pytest exit {pytest.returncode}", flush=True)
    return pytest.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
