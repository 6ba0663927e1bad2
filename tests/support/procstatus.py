"""A process's memory as the kernel counts it (/proc/PID/status), for the tests that bound what
bad input may cost: `vm_bytes("VmRSS")`, and the peak (`VmHWM`) since `reset_peak()`."""

from __future__ import annotations

__all__ = ["reset_peak", "vm_bytes"]


def vm_bytes(field: str, pid: int | str = "self") -> int:
    """`field` of /proc/PID/status (VmRSS, VmHWM, ...) in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


def reset_peak(pid: int | str = "self") -> None:
    """VmHWM (peak RSS) starts again from the current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")
