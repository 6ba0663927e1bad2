"""Work of the gateway's message analysis on hostile messages, counted (never timed): each test
pins a cost that grew faster than needed, found by bench/fuzz/growth.py or the atheris harness
(bench/fuzz/atheris_analysis.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from proxy.gateway import _rfc822, sortkeys
from proxy.gateway._rfc822 import AddressParser


def _addresses_made(monkeypatch, function, *args) -> int:
    made = 0
    add = _rfc822.AddressParser.add

    def counted(self):
        nonlocal made
        made += 1
        add(self)

    monkeypatch.setattr(_rfc822.AddressParser, "add", counted)
    function(*args)
    monkeypatch.undo()
    return made


def test_the_sort_record_reads_only_the_first_address_of_each_list(monkeypatch):
    """RFC 5256 2.2 / RFC 5957 2 sort on the first address only; a From and a To of 10 MiB of
    commas (millions of empty addresses, MISSING_MAILBOX each) were parsed whole, twice each:
    a minute or two of ingest CPU. Now one address per field."""
    raw = b"From: " + b"," * 20000 + b"\r\nTo: " + b"," * 20000 + b"\r\nCc: ,,,\r\n\r\nx\r\n"
    assert _addresses_made(monkeypatch, sortkeys.extract, raw) == 3
    fields = sortkeys.extract(raw)
    assert (fields.from_, fields.to, fields.cc) == ("MISSING_MAILBOX",) * 3
    assert fields.display_from == "MISSING_MAILBOX@MISSING_DOMAIN"


_TOKENS = [",", "a", "@", "<", ">", ":", ";", " ", "(", ")", '"', "\\", ".", "[", "]", "b", "\r\n",
           "\xe9", "g:", "x@y"]


@given(st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join))
def test_the_first_address_is_the_first_of_the_whole_list(text):
    value = text.encode()
    whole = AddressParser(value).parse()
    assert AddressParser(value).first() == (whole[0] if whole else None)


def test_the_first_address_on_many_random_lists():
    rng = random.Random(20261207)
    for _ in range(5000):
        value = "".join(rng.choice(_TOKENS) for _ in range(rng.randint(0, 25))).encode()
        whole = AddressParser(value).parse()
        assert AddressParser(value).first() == (whole[0] if whole else None), value
