"""What `workers: auto` means: one worker per CPU this process may use.

The CPUs are those of the process's affinity mask (`taskset`, a cpuset), capped by the cgroup v2
CPU quota when one is set (`cpu.max`, e.g. a Kubernetes CPU limit of 2 is "200000 100000"),
rounded up. A quota below one CPU still gets one worker.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quota_cpus(cpu_max: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` line ("QUOTA PERIOD" or "max PERIOD")."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_count(affinity: int | None = None, cpu_max: str | None = None) -> int:
    """CPUs for `auto`: the affinity mask's size, capped by the cgroup quota (read from the
    system when not given)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0))
    if cpu_max is None:
        try:
            cpu_max = CPU_MAX.read_text()
        except OSError:
            cpu_max = ""
    quota = quota_cpus(cpu_max)
    if quota is not None:
        affinity = min(affinity, math.ceil(quota))
    return max(1, affinity)


def resolve(workers: int | Literal["auto"]) -> int:
    """The number of worker processes `workers` asks for."""
    return cpu_count() if workers == "auto" else workers
