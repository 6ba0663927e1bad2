"""The process's GIL switch interval while a relay engine runs (`relay.gil_switch_interval`).

The engine's thread shares the GIL with trio's. While trio's thread is busy (a login storm), a
thread that wants the GIL waits until the holder's next system call or the switch interval
(CPython's default 5 ms), and a relayed command's steps want it about six times. So while the
engine runs, the process (every thread: trio's, the engine's, workers) runs at the configured
interval (0.2 ms by default: bench/README.md, "login storm"), never above its own; a reload's
new value applies at once; the process's own comes back when the engine's trio run ends.
"""

from __future__ import annotations

import sys

from ..config import GIL_SWITCH_INTERVAL

__all__ = ["SwitchInterval"]


class SwitchInterval:
    """The configured interval, and the process's own while it is lowered."""

    __slots__ = ("configured", "_before")

    def __init__(self) -> None:
        self.configured = GIL_SWITCH_INTERVAL
        self._before: float | None = None   # the process's own, while lowered

    @property
    def lowered(self) -> bool:
        return self._before is not None

    def configure(self, seconds: float) -> None:
        """The configured interval (a reload's): applied at once while lowered."""
        if seconds != self.configured:
            self.configured = seconds
            if self.lowered:
                self.lower()

    def lower(self) -> None:
        """Run the process at the configured interval, or at its own if that is lower."""
        if self._before is None:
            self._before = sys.getswitchinterval()
        _set(min(self.configured, self._before))

    def restore(self) -> None:
        """The process's own interval, as it was before `lower`."""
        if self._before is not None:
            _set(self._before)
            self._before = None


def _set(seconds: float) -> None:
    """sys.setswitchinterval in whole microseconds: CPython truncates to them, and reads back
    e.g. 100 us as 99.99... us, which set again would become 99."""
    sys.setswitchinterval(round(seconds, 6))
