"""Which mailbox names a LIST or LSUB shows (RFC 3501 6.3.8, 6.3.9), in time linear in the input.

Theory of operation
-------------------
A LIST pattern is matched without backtracking, so no pattern can make one command run for
seconds against a long name (``"*d*d*d*d*x"`` did, with the regex this replaced):

* runs of wildcards collapse (``*%`` and ``%*`` are ``*``, ``%%`` is ``%``);
* no wildcard: equality;
* only ``*``: the literal pieces are found left to right with ``str.find``; taking the
  leftmost occurrence of each piece is never wrong, because a ``*`` can absorb whatever
  lies between (the classic two-pointer glob), so the cost is O(len(name));
* with ``%``: a bit-parallel NFA (Shift-And): bit i set means "the first i pattern items
  are matched"; one step per name character, each a few integer operations, so the cost is
  O(len(name) x len(pattern) / word size) and never exponential.

The tree questions (which superior names are implied, which names have children) are
answered from one sorted list with `bisect`, O(n log n) in the number of names, instead of
comparing every name with every other.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

__all__ = ["MailboxPattern", "implied_parents", "Children"]

SEP = "/"


class MailboxPattern:
    """A compiled LIST pattern: "*" matches anything, "%" anything but the separator."""

    def __init__(self, text: str, sep: str = SEP) -> None:
        self.sep = sep
        items: list[str] = []
        for c in text:
            if c in "*%" and items and items[-1] in ("*", "%"):
                items[-1] = "*" if "*" in (c, items[-1]) else "%"
            else:
                items.append(c)
        self.items = items
        self.wild = {"*", "%"} & set(items)
        if "%" not in self.wild:   # literal pieces between the stars
            self.pieces = "".join(items).split("*")
        else:
            self._compile_nfa()

    def _compile_nfa(self) -> None:
        # bit i: item i. `lit[c]`: items equal to the literal c; `star`/`pct`: wildcard items.
        self.lit: dict[str, int] = {}
        self.star = self.pct = 0
        for i, item in enumerate(self.items):
            bit = 1 << i
            if item == "*":
                self.star |= bit
            elif item == "%":
                self.pct |= bit
            else:
                self.lit[item] = self.lit.get(item, 0) | bit
        self.accept = 1 << len(self.items)

    def matches(self, name: str) -> bool:
        if not self.wild:
            return name == "".join(self.items)
        if "%" not in self.wild:
            return self._glob_stars(name)
        return self._nfa(name)

    def _glob_stars(self, name: str) -> bool:
        first, *middle, last = self.pieces
        if len(name) < len(first) + len(last) or not name.startswith(first) \
                or not name.endswith(last):
            return False
        pos, end = len(first), len(name) - len(last)
        for piece in middle:
            pos = name.find(piece, pos, end)
            if pos < 0:
                return False
            pos += len(piece)
        return True

    def _nfa(self, name: str) -> bool:
        wild, star, pct, sep = self.star | self.pct, self.star, self.pct, self.sep
        state = self._closure(1, wild)   # state bit i: the first i items are matched
        for c in name:
            loop = star | (pct if c != sep else 0)
            state = ((state & self.lit.get(c, 0)) << 1) | (state & loop)
            if not state:
                return False
            state = self._closure(state, wild)
        return bool(state & self.accept)

    @staticmethod
    def _closure(state: int, wild: int) -> int:
        # A wildcard may match nothing; runs are collapsed, so one step reaches past it.
        return state | ((state & wild) << 1)


def implied_parents(names: Iterable[str], sep: str = SEP) -> set[str]:
    """Every superior name of `names` ("a" and "a/b" for "a/b/c"). Each walk up stops at a
    parent already found, so the work is linear in the total length of the names."""
    found: set[str] = set()
    for name in names:
        cut = name.rfind(sep)
        while cut > 0:
            parent = name[:cut]
            if parent in found:
                break
            found.add(parent)
            cut = name.rfind(sep, 0, cut)
    return found


class Children:
    """Has a name any descendant among `names`? One sort, then a binary search per question."""

    def __init__(self, names: Iterable[str], sep: str = SEP) -> None:
        self.sorted, self.sep = sorted(names), sep

    def has_children(self, name: str) -> bool:
        prefix = name + self.sep
        i = bisect_left(self.sorted, prefix)
        return i < len(self.sorted) and self.sorted[i].startswith(prefix)
