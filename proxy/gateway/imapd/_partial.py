"""PARTIAL (RFC 5267 4.4, RFC 9394 3.1): one window of a SEARCH or SORT result.

A range names 1-based positions in the result: `first:last`, or (RFC 9394) `-first:-last`
counted from the end (-1 is the last). Its two ends may come in either order (9394 3.1), and the
reply echoes the range low end first. Positions past the end give fewer results, or NIL.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

from ..numbers import InvalidNumber, number
from ._args import Reply

T = TypeVar("T")


class PartialRange(NamedTuple):
    low: int               # 1-based, low <= high
    high: int
    from_end: bool = False  # -low:-high: counted from the last result backwards

    @property
    def wire(self) -> bytes:
        sign = b"-" if self.from_end else b""
        return b"%s%d:%s%d" % (sign, self.low, sign, self.high)

    def window(self, results: list[T]) -> list[T]:
        """The results at these positions, in the result's order."""
        if not self.from_end:
            return results[self.low - 1:self.high]
        end = len(results) - self.low + 1     # -low is the last position taken
        return results[max(0, len(results) - self.high):max(0, end)]


def parse(value: object) -> PartialRange:
    """RFC 9394 3.1: partial-range = nz-number ":" nz-number / "-" nz-number ":" "-" nz-number
    (RFC 5267 4.4 had the first form only)."""
    text = bytes(value) if isinstance(value, (bytes, bytearray)) else b""
    low, colon, high = text.partition(b":")
    from_end = low.startswith(b"-")
    if not colon or from_end != high.startswith(b"-"):
        raise Reply.bad("PARTIAL expects a range low:high or -low:-high")
    try:
        a, b = (number(n[1:] if from_end else n, nonzero=True) for n in (low, high))
    except InvalidNumber:
        raise Reply.bad("PARTIAL expects a range low:high or -low:-high") from None
    return PartialRange(min(a, b), max(a, b), from_end)
