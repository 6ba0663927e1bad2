"""Sans-IO pieces: modified UTF-7 (RFC 3501 5.1.3), sequence sets, the hub's ordering rules."""

from __future__ import annotations

import pytest

from proxy.gateway.imapd import utf7
from proxy.gateway.imapd._args import Reply, compress, parse_sequence_set, resolve

CASES = [("INBOX", b"INBOX"), ("a&b", b"a&-b"), ("Entwürfe", b"Entw&APw-rfe"),
         ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-")]


@pytest.mark.parametrize("text,wire", CASES)
def test_utf7_round_trip(text, wire):
    assert utf7.encode(text) == wire and utf7.decode(wire) == text


@pytest.mark.parametrize("bad", [b"&Jjo", b"caf\xc3\xa9", b"&AGE-", b"&U,BTFw"])
def test_utf7_refuses_invalid(bad):
    with pytest.raises(utf7.Utf7Error):
        utf7.decode(bad)


def test_sequence_sets():
    assert resolve(parse_sequence_set(b"1:3,5,7:*"), 9) == [(1, 3), (5, 5), (7, 9)]
    assert resolve(parse_sequence_set(b"*:4"), 2) == [(2, 4)]
    assert compress([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8"
    for bad in (b"0", b"1:", b"a", b""):
        with pytest.raises(Reply):
            parse_sequence_set(bad)
