"""The pieces every fuzz target shares: the time budget, chunkings, mutations, and the driver that
enforces the one invariant (after h11's `fuzz/afl-server.py`):

    any input either parses or raises the protocol's own error type, never another exception,
    whether it arrives whole, byte by byte, or cut at random points, and all three give the
    same result.

Budget: each target names its CI example count (`fuzz_settings(n)`), chosen so that the whole
tests/fuzz/ directory runs in about 30-60 s on the CI machine. `FUZZ_EXAMPLES=100000 make test`
(or `FUZZ_EXAMPLES=... pytest tests/fuzz`) runs every target that many examples instead; Hypothesis
keeps what it found in .hypothesis/ and prints a `@reproduce_failure` blob for any failure.

A crash found by fuzzing is fixed in the parser and its input kept in the target as an explicit
`@example(...)`, so it is replayed on every run, before the random examples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)


def fuzz_settings(ci_examples: int) -> settings:
    """Settings for one fuzz target: `ci_examples` examples in CI, FUZZ_EXAMPLES when set. No
    per-example deadline (a loaded CI machine is not a parser bug: the bound is the count)."""
    return settings(
        max_examples=FUZZ_EXAMPLES or ci_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# ---- chunkings ---------------------------------------------------------------------------------

def bytewise(wire: bytes) -> list[bytes]:
    return [wire[i:i + 1] for i in range(len(wire))]


def cut(wire: bytes, points: Sequence[int]) -> list[bytes]:
    """`wire` cut at `points` (any order, duplicates and out-of-range values allowed)."""
    bounds = [0, *sorted(p for p in set(points) if 0 < p < len(wire)), len(wire)]
    return [wire[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


#: Where to cut an input: positions taken modulo its length (draw with `cuts=CUTS`).
CUTS = st.lists(st.integers(0, 4096), max_size=12)


def chunkings(wire: bytes, cuts: Sequence[int]) -> dict[str, list[bytes]]:
    """The three ways the same bytes are fed: whole, one byte at a time, cut at `cuts`."""
    points = [p % (len(wire) + 1) for p in cuts]
    return {"whole": [wire] if wire else [], "bytewise": bytewise(wire), "cuts": cut(wire, points)}


# ---- mutations ---------------------------------------------------------------------------------

@st.composite
def mutated(draw: Callable[[Any], Any], base: st.SearchStrategy[bytes],
            fragments: Sequence[bytes] = ()) -> bytes:
    """Bytes from `base` (usually well-formed), then up to 4 mutations: insert random bytes or a
    grammar fragment, delete a span, overwrite a byte, duplicate a span, truncate. Most examples
    keep most of their structure, so the parser is exercised deep, not only at its first byte."""
    wire = bytearray(draw(base))
    insertions = st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from(list(fragments) or [b"\r\n"]))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(wire)))
        kind = draw(st.sampled_from(["insert", "delete", "overwrite", "duplicate", "truncate"]))
        if kind == "insert":
            wire[at:at] = draw(insertions)
        elif kind == "delete":
            del wire[at:at + draw(st.integers(1, 8))]
        elif kind == "overwrite" and at < len(wire):
            wire[at] = draw(st.integers(0, 255))
        elif kind == "duplicate":
            wire[at:at] = wire[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del wire[at:]
    return bytes(wire)


# ---- the driver ---------------------------------------------------------------------------------

MAX_STEPS = 100_000   # next_event() calls per input: each one consumes input or ends the stream


class Outcome(list[object]):
    """What a parser made of one input: events (data chunks merged, so that chunking does not
    matter) and errors as ("error", ...) tuples, in order."""

    def add_data(self, data: bytes) -> None:
        if self and isinstance(self[-1], DataRun):
            self[-1] = DataRun(self[-1] + data)
        else:
            self.append(DataRun(data))


class DataRun(bytes):
    """Consecutive payload chunks (IMAP LiteralData, POP3 MultilineData) joined."""

    def __repr__(self) -> str:
        return f"DataRun({bytes(self)!r})"


class Grammar:
    """What the driver needs to know about one protocol's sans-IO parsers."""

    def __init__(self, *, error: type[Exception], need_data: object, closed: type,
                 data: type, describe: Callable[[Any], tuple[object, ...]]) -> None:
        self.error, self.need_data, self.closed, self.data = error, need_data, closed, data
        self.describe = describe   # a ProtocolError -> a comparable tuple (kind, reply, fatal...)


def drive(grammar: Grammar, parser: Any, chunks: Sequence[bytes], *,
          react: Callable[[Any, object, int], None] | None = None,
          check: Callable[[Any], None] | None = None) -> Outcome:
    """Feed `chunks` then EOF, calling `next_event()` until NEED_DATA after each, and record the
    outcome. Only the grammar's events and its error may come out: any other exception propagates
    and fails the target. Stops at the first fatal error or at the closed event (which must come
    after EOF). `react(parser, event, index)` answers events the way a real caller would
    (expect_line(), reject_literal(), ...); `check(parser)` runs at every NEED_DATA (bounds)."""
    outcome = Outcome()
    for chunk in [*chunks, b""]:
        parser.receive_data(chunk)
        for _ in range(MAX_STEPS):
            try:
                event = parser.next_event()
            except grammar.error as error:
                outcome.append(("error", *grammar.describe(error)))
                if error.fatal:
                    return outcome
                continue
            if event is grammar.need_data:
                if check is not None:
                    check(parser)
                break
            if isinstance(event, grammar.data):
                outcome.add_data(bytes(event.data))
            else:
                outcome.append(event)
            if isinstance(event, grammar.closed):
                return outcome
            if react is not None:
                react(parser, event, len(outcome))
        else:
            raise AssertionError(f"no NEED_DATA after {MAX_STEPS} next_event() calls: a parser loop")
    raise AssertionError("EOF was fed but the parser never reported the connection closed")


def same_everywhere(results: dict[str, Outcome]) -> Outcome:
    """Assert every chunking gave the same outcome; return it."""
    whole = results["whole"]
    for name, outcome in results.items():
        assert outcome == whole, f"{name} differs from whole:\n{name}: {outcome!r}\nwhole: {whole!r}"
    return whole
