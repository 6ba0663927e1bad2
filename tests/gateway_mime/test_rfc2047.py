"""rfc2047.decode_header: what the standard library's `email.header.decode_header` returns, for
every str, in linear work (the standard library's grows with the square of hostile input)."""

from __future__ import annotations

import email.errors
import email.header

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.gateway import rfc2047
from proxy.gateway.rfc2047 import decode_header

PIECES = ["=?", "?", "=", "?=", "q", "Q", "b", "B", "a", " ", "\t", "\n", "\r", "\r\n", "utf-8",
          "=41", "QUI", "_", "x", "iso-8859-1", "\x0b", "\u2028", "é", "=?utf-8?q?", "=?utf-8?b?",
          "?= "]


def _outcome(function, text: str):
    try:
        return "ok", function(text)
    except email.errors.HeaderParseError:
        return "error", None


@pytest.mark.parametrize("text", [
    "plain", "", "  =?utf-8?q?a_b?=  =?utf-8?q?c?= d", "=?utf-8?b?w6k?= x =?iso-8859-1?q?=E9?=",
    "=?utf-8?b?!!!?=", "a\n =?utf-8?q?x?=\r\n\t=?utf-8?q?y?=", "=?a\n?q?x?=", "=?=?utf-8?q?x?=",
    "=?utf-8?q? ?= =?utf-8?q? ?= =?utf-8?q?z?=", "=?utf-8?q?x?==?utf-8?q?y?=", "=?a?q?x" * 5])
def test_as_the_standard_library(text):
    assert _outcome(decode_header, text) == _outcome(email.header.decode_header, text)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=16).map("".join))
def test_as_the_standard_library_for_any_mix_of_its_tokens(text):
    assert _outcome(decode_header, text) == _outcome(email.header.decode_header, text)


class _ScanCounting(str):
    """A header value counting the characters its `find` calls may scan (start to the match's
    end, or to the end when there is none)."""

    scanned = 0

    def find(self, sub, start=0, end=None, /):   # type: ignore[override]
        stop = len(self) if end is None else min(end, len(self))
        at = super().find(sub, start, stop)
        type(self).scanned += max(0, (stop if at < 0 else at + len(sub)) - start)
        return at


@pytest.mark.parametrize("hostile, words", [
    ("=?a?q?x" * 4000, 0),                  # no "?=" after any opener (the regex: 2 s at 35 KB)
    ("=?a?q?x\n" * 4000 + "?=", 0),         # one, but past a line end from each
    ("=?" * 8000 + "q?x?=", 1),             # charsets that end at the next opener
    (" ".join("=?utf-8?q?a=%02X?=" % (n % 256) for n in range(4000)), 4000),   # one charset
])
def test_the_scan_for_encoded_words_is_linear(hostile, words):
    """The scanner behind decode_header (which runs it on the value, then on each line)."""
    _ScanCounting.scanned = 0
    assert len(list(rfc2047._words(_ScanCounting(hostile)))) == words
    assert _ScanCounting.scanned <= 4 * len(hostile)
