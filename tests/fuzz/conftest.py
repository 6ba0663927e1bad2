"""Fuzz targets: one file per parser of untrusted bytes, all run by `make test` in bounded time.

To add a target (e.g. for the gateway's MIME, ENVELOPE/BODYSTRUCTURE or SEARCH parsers):
1. Write `tests/fuzz/test_fuzz_<parser>.py`. Build inputs from the grammar (valid-looking
   messages) and pass them through `harness.mutated(...)`, so the parser is exercised deep.
2. Decorate each target with `@harness.fuzz_settings(N)`, N chosen so the target takes a few
   seconds here (the whole directory: 30-60 s); `FUZZ_EXAMPLES` overrides N for long runs.
3. Assert the invariant: the parser returns its values or raises its own error type, nothing
   else, and (for incremental parsers) the same whole, byte by byte (`harness.bytewise`) and at
   random cuts (`harness.chunkings`, `harness.drive`, `harness.same_everywhere`). Add the
   parser's own bounds (buffer size, depth, work) as asserts too.
4. When a target finds a crash: fix the parser, and keep the input as `@example(...)` on the
   target, with a comment naming the bug.

Every test in this directory carries the `fuzz` marker: `pytest -m "not fuzz"` skips them for a
quick local run; CI runs them all.
"""

from __future__ import annotations

import pathlib

import pytest

_HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.fuzz)
