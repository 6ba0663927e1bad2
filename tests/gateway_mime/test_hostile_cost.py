"""Work of the gateway's message analysis on hostile messages, counted (never timed): each test
pins a cost that grew faster than needed, found by bench/fuzz/growth.py or the atheris harness
(bench/fuzz/atheris_analysis.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from proxy.gateway import _parts, _rfc822, sortkeys
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


class _Counted(bytes):
    """A parameter value that counts the bytes of each concatenation it is the right side of
    (`bytes + _Counted` calls `_Counted.__radd__` first: it is a subclass)."""

    copied = 0

    def __radd__(self, other: bytes) -> bytes:
        _Counted.copied += len(other) + len(self)
        return bytes(other) + bytes(self)


def test_rfc2231_continuations_are_joined_once(monkeypatch):
    """RFC 2231 3: `name*0*=...; name*1*=...` are one value. Each piece was appended with
    `bytes +=`, copying the value so far: a Content-Type of 160,000 continuations (2.9 MB)
    took 6.8 s of ingest CPU, 3x per doubling. Counted: the bytes copied by concatenation."""
    content_param = _parts.Rfc822.content_param

    def counted(self):
        ret, key, value = content_param(self)
        return ret, key, _Counted(value)

    monkeypatch.setattr(_parts.Rfc822, "content_param", counted)
    value = b"text/plain" + b"".join(b"; a*%d*=xxxxxxxx" % n for n in range(4000))
    p = _rfc822.Rfc822(value)
    p.content_type()
    _Counted.copied = 0
    assert _parts.rfc2231_params(p) == [(b"a*", b"xxxxxxxx" * 4000)]
    assert _Counted.copied == 0   # before: 64,016,000 (the merged value copied per piece)
