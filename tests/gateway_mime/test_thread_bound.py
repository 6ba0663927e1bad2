"""THREAD=REFERENCES over one message with a huge References chain costs work linear in the
chain (counted in executed lines of thread.py, not in seconds): each link's loop check used to
walk the chain built so far, so 100,000 References were ~5e9 steps and wedged the process."""

from __future__ import annotations

import sys

from proxy.gateway import sortkeys, thread
from proxy.gateway.sort import Item


def _item(references: int) -> Item:
    raw = (b"Subject: r\r\nMessage-ID: <x@example.org>\r\nReferences: "
           + b" ".join(b"<r%d@example.org>" % n for n in range(references)) + b"\r\n\r\nbody\r\n")
    return Item(1, 1, 0.0, len(raw), sortkeys.extract(raw))


def _lines_run(item: Item) -> tuple[int, bytes]:
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename == thread.__file__:
            if event == "line":
                count += 1
            return trace
        return None

    sys.settrace(trace)
    try:
        roots = thread.references([item])
    finally:
        sys.settrace(None)
    return count, thread.render(roots)


def test_a_long_references_chain_costs_linear_work():
    small, answer = _lines_run(_item(1_000))
    large, again = _lines_run(_item(4_000))
    assert answer == again == b"(1)"   # the dummies of the chain are pruned (RFC 5256 4 (3))
    assert large < 5 * small   # 4x the chain: ~4x the work (quadratic would be ~16x)
