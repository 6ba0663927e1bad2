"""The hostile messages found so far (tests/fuzz/hostile.py), each through every function that
reads a stored message (tests/fuzz/targets.py: the ingest analysis, sort record and arrival
date; FETCH sections, BINARY, PREVIEW, SEARCH, SORT, THREAD): none raises (a BINARY refusal is
an answer), the ingest blob reads back. Then a seeded, bounded mutation run from them (the
long runs are bench/fuzz/atheris_analysis.py). Cost is pinned by counters in
tests/gateway_mime/test_hostile_cost.py, never by the clock."""

from __future__ import annotations

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from proxy.gateway import analysis

from .harness import fuzz_settings, mutated
from .hostile import HOSTILE
from .targets import TARGETS


def _every_reader(raw: bytes) -> None:
    assert analysis.decode(analysis.analyze_for_store(raw)) is not None
    for function in TARGETS.values():
        function(raw)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_reader_of_a_stored_message_answers_a_hostile_one(name):
    _every_reader(HOSTILE[name])


_CUT = [raw[:2048] + raw[-512:] for raw in HOSTILE.values()]


@seed(20261207)
@fuzz_settings(60)
@given(mutated(st.sampled_from(_CUT), [b"\r\n", b",", b"<", b"=?", b"--b\r\n", b";", b"\0", b"\xff"]))
def test_every_reader_answers_the_hostile_messages_mutated(raw):
    _every_reader(raw)
