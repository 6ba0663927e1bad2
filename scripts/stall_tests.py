"""Run pytest while stalling its processes at random: a way to find tests whose outcome depends
on timing, before a loaded CI machine does.

Every 1-3 s one process of the run is stopped with SIGSTOP for 0.8-1.5 s, then continued: what a
2-core machine at load 20 does to a process now and then. A test that fails under it waits for
time (a fixed timeout, a window it must hit) rather than for a condition. The run's processes:
pytest's tree (pytest itself, with its fake servers' threads, a proxy it started), and the
Dovecot and PostgreSQL servers it started, which detach from that tree: they are found by
their directories, under a root whose owner.pid is this pytest (tests/support/dovecot.py
make_root), with their own children (STALL_DAEMONS=0 leaves them out). Nothing of another run
or another user of the machine is ever stopped.

    PYTHONPATH=. .venv/bin/python scripts/stall_tests.py tests/integration/test_x.py [pytest args]

SEED=n makes the stall schedule repeatable (the tests' own timing still varies).
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT_GLOB = "mailproxy-tests-*/owner.pid"   # tests/support/dovecot.py: ROOT_PREFIX, OWNER_FILE


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: its parent and its command line, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            found[int(entry)] = (parent, command)
    return found


def _roots_of(owner: int) -> list[str]:
    """The directories of the Dovecot and PostgreSQL instances the pytest `owner` made."""
    roots = []
    for mark in pathlib.Path(tempfile.gettempdir()).glob(ROOT_GLOB):
        try:
            if int(mark.read_text()) == owner:
                roots.append(str(mark.parent) + "/")
        except (OSError, ValueError):
            continue
    return roots


def _tree(top: int, daemons: bool) -> list[int]:
    """`top` and its descendants, with (`daemons`) the servers it started and their children."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    todo = [top]
    if daemons:
        roots = _roots_of(top)
        todo += [pid for pid, (_, command) in processes.items()
                 if pid != top and any(root in command for root in roots)]
    found: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return sorted(found)


def main(args: list[str]) -> int:
    rng = random.Random(int(os.environ.get("SEED", "0")) or None)
    daemons = os.environ.get("STALL_DAEMONS", "1") != "0"
    pytest = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *args])
    stalled: collections.Counter[str] = collections.Counter()   # by process name
    while pytest.poll() is None:
        time.sleep(rng.uniform(1, 3))
        victim = rng.choice(_tree(pytest.pid, daemons))
        try:
            with open(f"/proc/{victim}/comm") as comm:
                name = comm.read().strip()
            os.kill(victim, signal.SIGSTOP)
            try:
                time.sleep(rng.uniform(0.8, 1.5))
            finally:
                os.kill(victim, signal.SIGCONT)
            stalled[name] += 1
        except (ProcessLookupError, FileNotFoundError):
            pass
    names = ", ".join(f"{name} {n}" for name, n in stalled.most_common())
    print(f"stall_tests: {stalled.total()} stalls ({names}), pytest exit {pytest.returncode}",
          flush=True)
    return pytest.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
