"""PREVIEW text (proxy/gateway/preview.py), exact: the rules the differential test against Dovecot
(tests/gateway_imapd/test_preview_differential.py) exercises on the corpus, one per case here."""

from __future__ import annotations

import pytest

from proxy.gateway import mime
from proxy.gateway.preview import MAX_CHARS, preview

from . import corpus

PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n\r\n"


@pytest.mark.parametrize("body, expected", [
    (b"line1\r\n>quote2\r\nline2\r\n", "line1 line2"),                      # quoted lines left out
    (b"line1\n>quote2\n> quote3\n > line4\n\n  \t\t  \nline5\n  \t ", "line1 > line4 line5"),
    (b">quote1\r\n>quote2\r\n", ">quote1 quote2"),                          # only quoted: used
    (b"  Lorem\0 Ipsum\r\n", "Lorem Ipsum"),                                # NUL skipped
    (b"\xef\xbb\xbfhyv\xc3\xa4\xc3\xa4", "hyv\u00e4\u00e4"),                # BOM skipped
    (b" \r\n", ""),
])
def test_plain_text_rules(body, expected):
    assert preview(PLAIN + body) == expected


def test_long_text_is_cut_at_max_chars_without_trailing_space():
    text = preview(PLAIN + b"word " * 100)
    assert len(text) == MAX_CHARS - 1 and text.endswith("word") and not text.endswith(" ")


def test_html_is_reduced_and_alternative_prefers_plain():
    html = (b"Content-Type: text/html\r\n\r\n<html><style>x{}</style><p>Hi&amp;you</p>"
            b"<blockquote>quoted</blockquote><!-- c --></html>")
    assert preview(html) == "Hi&you"
    alternative = (b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"
                   b"Content-Type: text/html\r\n\r\n<p>html</p>\r\n--a\r\n"
                   b"Content-Type: text/plain\r\n\r\nplain\r\n--a--\r\n")
    assert preview(alternative) == "plain"


@pytest.mark.parametrize("raw", [
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n",   # not text: none
    b"Content-Type: text\r\n\r\nno subtype\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-foo\r\n\r\nundecodable\r\n",
    # a NUL or 8-bit bytes in the encoding's name: unknown, not a crash (found by the fuzz test)
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding:\x00quoted-printable\r\n\r\nx\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quot\xc3\xa9d\r\n\r\nx\r\n",
])
def test_no_preview(raw):
    assert preview(raw) == ""


def test_cached_part_table_gives_the_same_preview_on_the_corpus():
    for name, raw in corpus.corpus():
        assert preview(raw, parts=mime.analyze(raw)["parts"]) == preview(raw), name
