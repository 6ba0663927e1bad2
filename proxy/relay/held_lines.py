"""Held lines: the client bytes the IMAP relay has received but neither forwarded nor dropped.

Theory of operation: the relay feeds each chunk from the client to its CommandParser and keeps
the same bytes here. Once the parser has judged them (its events drained), `accepted()` gives
back what it consumed, i.e. complete line parts and literal payload bytes, to forward; the
incomplete tail of a line stays held (the parser buffers at most `max_line` of it) until its
line end arrives. A line part is thus forwarded only once it is known to be valid.

When the parser refuses a command in its *first* line part (`rejected_at` is not None: nothing
of it was forwarded), `reject()` gives back what came before it, to forward, and everything
from there to where the parser resumes (`resumed_at`, after skipping the rest of the command,
a non-synchronizing literal included) is dropped by `after_event()`. Offsets are the parser's
(bytes consumed since it was created); `sent` is the offset of the first held byte.
"""

from __future__ import annotations

from ..imap import CommandParser

__all__ = ["HeldLines"]


class HeldLines:
    def __init__(self, parser: CommandParser, leftover: bytes = b""):
        self.parser = parser
        self.held: bytes | bytearray = leftover   # what the parser was fed, from `sent` on
        self.sent = 0
        self.dropping = False   # skipping a rejected command

    def add(self, data: bytes) -> None:
        """`data` was just fed to the parser."""
        held = self.held
        if not held:
            self.held = data
        else:   # the start of a line came in an earlier chunk
            self.held = (held if type(held) is bytearray else bytearray(held)) + data

    def accepted(self, keep: int | None = None) -> bytes | bytearray:
        """What the parser consumed, to forward, once its events are drained; the last `keep`
        bytes stay held (default: the incomplete line it buffers)."""
        held = self.held
        keep = self.parser.buffered if keep is None else keep
        if not keep:
            self.held = b""
            self.sent += len(held)
            return held
        return self._take(self.sent + len(held) - keep)

    def reject(self) -> bytes | bytearray | None:
        """The parser just refused a command: None when part of it went upstream already, else
        the bytes before it (to forward); the rest of it will be dropped."""
        start = self.parser.rejected_at
        if start is None:
            return None
        before = b"" if self.dropping else self._take(start)   # (while dropping: no good bytes)
        self.dropping = True
        return before

    def after_event(self) -> None:
        """After each event (or NEED_DATA) while dropping: drop what the parser skipped, all
        it consumed while still skipping, else up to where it resumed."""
        parser = self.parser
        if parser.resynchronising:
            upto = self.sent + len(self.held) - parser.buffered
        else:
            upto, self.dropping = parser.resumed_at, False
        self._take(upto)

    def reread(self, size: int) -> None:
        """The held bytes were taken out of the parser (`take_unconsumed`, which counts them as
        consumed) and are fed to it again: its offsets for them are `size` further on."""
        self.sent += size

    def _take(self, upto: int) -> bytes | bytearray:
        n = upto - self.sent
        if n <= 0:
            return b""
        held = self.held
        self.held, self.sent = held[n:], upto
        return held[:n]
