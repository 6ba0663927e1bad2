"""A big message's analysis (at APPEND and ingest) holds few copies of it (bench/append_memory.py:
a 50 MB APPEND peaked at 4x the message, now 3x): the search text of a leaf in an identity
transfer encoding is decoded from a view of the message, the cache blob's JSON is built a text at
a time, the virtual size is counted in place. Peaks are tracemalloc's (allocations, not time),
and the answers are the ones the copying code gave."""

from __future__ import annotations

import email.message
import json
import tracemalloc

import pytest

from proxy.gateway import analysis, mime
from proxy.gateway.basesubject import casemap
from proxy.gateway.charsets import decode_text
from proxy.gateway.search_text import text_blobs
from proxy.imap._tokens import Literal

SIZE = 8 * 1024 * 1024
SLACK = SIZE // 8   # headers, the part table, the interpreter's own small allocations


def _big_message() -> Literal:
    """As the IMAP parser hands an APPEND's message over: a Literal (a bytes subclass)."""
    line = b"x" * 998 + b"\r\n"
    return Literal(b"Subject: big\r\nFrom: a@example.org\r\n\r\n" + line * (SIZE // len(line)))


def _peak(function) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        function()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_search_text_of_a_big_body_holds_its_text_and_the_case_mapped_copy():
    raw = _big_message()
    peak = _peak(lambda: text_blobs(raw))
    assert peak < 2 * SIZE + SLACK, peak / SIZE   # was 3x: a slice, a str, its bytes again


def test_cache_blob_of_a_big_message_holds_two_copies_at_most():
    raw = _big_message()
    peak = _peak(lambda: analysis.analyze_for_store(raw))
    assert peak < 2 * SIZE + SLACK, peak / SIZE   # was 3x: the text, its JSON and their join


def test_mime_analysis_does_not_copy_the_body():
    raw = _big_message()
    peak = _peak(lambda: mime.analyze(raw))
    assert peak < SLACK, peak / SIZE   # was 1x: a slice to count the body's lines


def test_cache_blob_is_what_json_dumps_writes():
    data = {"v": mime.CACHE_VERSION, "tv": analysis.TEXT_VERSION, "n": [1, None, "é"]}
    texts = ['SUBJECT: "Q" \\ É\x00', "body \u2028 \U0001f600 text\n"]
    blob = analysis._with_texts(dict(data), list(texts))
    assert blob == json.dumps({**data, "th": texts[0], "tb": texts[1]}).encode()


def _copying_leaf_text(headers: list[tuple[str, str]], body: bytes) -> str:
    """What the search text of a leaf was before: `email` decoding a str copy of the payload."""
    leaf = email.message.Message()
    for name, value in headers:
        leaf[name] = value
    leaf.set_payload(body.decode("ascii", "surrogateescape"))
    payload = leaf.get_payload(decode=True)
    return decode_text(payload if isinstance(payload, bytes) else b"", leaf.get_content_charset())


BODY = "Grüße, ½ café\r\n".encode("utf-8") + bytes(range(128, 256)) + b"\r\n=C3=A9 aGk=\r\n"


@pytest.mark.parametrize("encoding", [None, "7bit", "8bit", "binary", "X-Unknown", " 8BIT",
                                      "quoted-printable", "BASE64", "x-uuencode"])
@pytest.mark.parametrize("charset", [None, "utf-8", "iso-8859-1", "windows-1252", "no-such",
                                     "utf-16", "idna"])
def test_leaf_text_is_the_text_email_gave(encoding, charset):
    """Identity transfer encodings (and unknown ones) are decoded from a view of the message,
    the others by `email` as before: the same text either way."""
    headers = [("Content-Type", "text/plain" + (f"; charset={charset}" if charset else ""))]
    if encoding is not None:
        headers.append(("Content-Transfer-Encoding", encoding))
    raw = b"MIME-Version: 1.0\r\n" + b"".join(
        f"{name}: {value}\r\n".encode() for name, value in headers) + b"\r\n" + BODY
    _, body_text = text_blobs(Literal(raw))
    assert body_text == casemap(_copying_leaf_text(headers, BODY))
