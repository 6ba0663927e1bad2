"""The commands an IMAP relay has forwarded and not yet seen answered.

Theory of operation: the client pump `start()`s each command when the parser names it (its tag,
its bounded metric label, a start time); the upstream pump `complete()`s it at the tagged
response with that tag, which counts it by status and observes its duration (CommandMeter).
A running IDLE (RFC 2177) is pending too, under `idle_tag`, but owes nothing: the upstream
only answers it after the client's DONE, so the upstream-response timer and the drain do not
wait for it (`owed()`). When IDLE is refused the client's next line, which the parser
was told to return raw (it might have been DONE), is an ordinary command: `raw_line()` names it.
Whatever is still pending when the session ends is counted with status "none" (`settle()`).
"""

from __future__ import annotations

import time

from ..metrics import command_label
from ..session.context import CommandMeter

__all__ = ["InFlight"]


class InFlight:
    __slots__ = ("pending", "idle_tag", "meter")

    def __init__(self, meter: CommandMeter):
        self.pending: dict[bytes, tuple[str, float]] = {}   # tag -> (label, monotonic start)
        self.idle_tag: bytes | None = None
        self.meter = meter

    def owed(self) -> bool:
        """A command other than IDLE waits for its tagged answer."""
        pending = self.pending
        return len(pending) > (self.idle_tag in pending)   # (no set built per command)

    def start(self, tag: bytes, label: str) -> bool:
        """A command forwarded; True when it is the only one owed an answer (`owed()` was
        False before it): the upstream's time to answer starts with it."""
        pending = self.pending
        first = len(pending) <= (self.idle_tag in pending)
        pending[tag] = (label, time.monotonic())
        return first

    def complete(self, tag: bytes, status: bytes) -> None:
        """The tagged response to `tag`: metrics; a refused IDLE is no longer running."""
        entry = self.pending.pop(tag, None)
        if entry is not None:
            self.meter.completed(entry[0], status, entry[1])
        if tag == self.idle_tag and status != b"OK":
            self.idle_tag = None

    def raw_line(self, line: bytes) -> tuple[bytes, str] | None:
        """The line read raw after IDLE: None if it is the DONE ending the IDLE, else (tag,
        label) of the command it is (IDLE was refused upstream, RFC 2177 3), or None when it
        names none; it is relayed unchanged like every other byte either way."""
        was_idle, self.idle_tag = self.idle_tag, None
        if was_idle is not None and line.strip().upper() == b"DONE":
            return None
        parts = line.split(b" ", 3)
        if len(parts) < 2:
            return None
        name = parts[1].upper()
        if name == b"UID" and len(parts) >= 3:
            name += b" " + parts[2].upper()
        return parts[0], command_label("imap", name)

    def settle(self) -> None:
        """The session ended: what was never answered counts with status "none"."""
        for label, _ in self.pending.values():
            self.meter.metrics.commands.labels("imap", label, "none").inc()
        self.pending.clear()
