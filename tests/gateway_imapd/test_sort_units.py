"""Unit tests of the SORT/THREAD building blocks (the differential test compares whole answers
with Dovecot; these pin the parts it cannot reach: huge depths, the RFC 5256 base subject
steps one by one, and the collation)."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from proxy.gateway.basesubject import base_subject, casemap, decode_words
from proxy.gateway.sort import Item, sort_items
from proxy.gateway.sortkeys import extract
from proxy.gateway.thread import ordered_subject, references, render


@pytest.mark.parametrize("subject, base, reply", [
    (b"Re: hello", "HELLO", True),
    (b"  RE:  Fwd: [list] Re[2]: hi (fwd) ", "HI", True),   # steps 2, 3, 4, 5
    (b"[Fwd: re: x]", "X", True),                           # step 6
    (b"[a]", "[A]", False),                                 # 4: a blob alone stays
    (b"[a] b", "B", False),
    (b"Fw: x", "X", True),
    (b"fwd : y", "Y", True),
    (b"Re:", "", True),
    (b"=?UTF-8?Q?Re=3A_=C3=BCber?= alles", "U\u0308BER ALLES", True),
    (b"x (fwd)(fwd)", "X", True),
    (b"no change", "NO CHANGE", False),
])
def test_base_subject_steps(subject, base, reply):
    assert base_subject(subject) == (base, reply)


@pytest.mark.parametrize("subject, base, reply", [
    (b"[b] " * 400 + b"x", "X", False),                        # 4, blob by blob
    (b"[b] " * 400 + b"[c]", "[C]", False),                    # 4: the last blob stays
    (b"[b] " * 400 + b"Re: x", "X", True),                      # 3 after 4's blobs
    (b"[Fwd: " * 400 + b"x" + b"]" * 400, "X", True),          # 6, repeated
])
def test_base_subject_work_grows_with_the_subject_not_its_square(subject, base, reply):
    """Step (3) scanned every leading blob before failing, then (4) removed one and (3) scanned
    the rest again: "[b] " * 20,000 took 65 s of CPU (at ingest: the SORT key), and each (6)
    copied the text. Counted in executed lines of basesubject.py, as test_tls counts its
    parser's (no clock): 7 to 19 per character now, 560 for the blobs before."""
    import proxy.gateway.basesubject as module
    lines = 0

    def trace(frame, event, arg):
        if frame.f_code.co_filename != module.__file__:
            return None

        def count(frame, event, arg):
            nonlocal lines
            lines += event == "line"
            return count
        return count

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        found = base_subject(subject)
    finally:
        sys.settrace(previous)
    assert found == (base, reply)
    assert lines <= 30 * len(subject), lines


def test_casemap_is_each_characters_simple_titlecase_then_nfkd_for_every_code_point():
    """RFC 5051 2, checked the slow way on all of Unicode (the fast path upper()s plain runs).
    One code point a line: a run of more than 30 combining marks (U+0300...) is cut by U+034F
    before NFKD (basesubject.STREAM_SAFE_RUN), which test_hostile_cost.py checks."""
    every = "\n".join(chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF)
    slow = []
    for char in every:
        title = char.title()
        slow.append(title if len(title) == 1 else char)
    assert casemap(every) == unicodedata.normalize("NFKD", "".join(slow))
    assert casemap("Grüße") != casemap("grüsse") and casemap("Grüße") == casemap("GRÜßE")


def test_casemap_titlecases_and_decomposes():
    # RFC 5051 2: simple titlecase (ß and the ligature have none), then full decomposition
    assert casemap("straße \u01c4 \ufb01") == "STRAßE Dz\u030c fi"


def _item(n: int, raw: bytes) -> Item:
    return Item(n, n, 1000.0 + n, len(raw), extract(raw))


def test_thread_of_a_chain_10000_deep_needs_no_recursion():
    items = [_item(1, b"Message-ID: <m1@x>\r\nSubject: deep\r\n\r\n")]
    for n in range(2, 10_001):
        items.append(_item(n, b"Message-ID: <m%d@x>\r\nIn-Reply-To: <m%d@x>\r\nSubject: Re: deep"
                              b"\r\n\r\n" % (n, n - 1)))
    threads = references(items)
    assert render(threads) == b"(" + b" ".join(b"%d" % n for n in range(1, 10_001)) + b")"


def test_references_loops_never_link_a_message_below_itself():
    items = [
        _item(1, b"Message-ID: <a@x>\r\nReferences: <b@x>\r\nSubject: one\r\n\r\n"),
        _item(2, b"Message-ID: <b@x>\r\nReferences: <a@x>\r\nSubject: two\r\n\r\n"),
        _item(3, b"Message-ID: <c@x>\r\nReferences: <c@x>\r\nSubject: three\r\n\r\n"),
    ]
    # 1 under b's dummy, which message 2 then fills: b's parent link to a would loop
    assert render(references(items)) == b"(2 1)(3)"


def test_ordered_subject_and_sort_program():
    items = [_item(n, b"Subject: %s\r\nFrom: %s@x\r\n\r\n" % (s, f))
             for n, (s, f) in enumerate([(b"b", b"z"), (b"Re: a", b"y"), (b"a", b"y"),
                                          (b"B", b"x")], 1)]
    assert render(ordered_subject(items)) == b"(1 4)(2 3)"
    ordered = sort_items(items, [("FROM", True), ("SUBJECT", False)])
    assert [i.number for i in ordered] == [1, 2, 3, 4]
    ordered = sort_items(items, [("SUBJECT", False), ("FROM", False)])
    assert [i.number for i in ordered] == [2, 3, 4, 1]   # ties in mailbox order


async def test_malformed_sort_and_thread_get_bad_and_the_session_goes_on(gateway):
    import trio

    from .conftest import message
    from .test_condstore import Raw

    gateway.deliver(message(1))

    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        a.cmd("SELECT INBOX")
        for command in ("SORT () UTF-8 ALL", "SORT (FOO) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL",
                        "SORT DATE UTF-8 ALL", "SORT (DATE)", "SORT (DATE) UTF-8 NOTAKEY",
                        "SORT RETURN (PARTIAL 0:3) (DATE) UTF-8 ALL",
                        "SORT RETURN (PARTIAL) (DATE) UTF-8 ALL", "SORT RETURN (FOO) (DATE) UTF-8 ALL",
                        "THREAD FOO UTF-8 ALL", "THREAD REFERENCES", "THREAD", "SEARCH OLDER x"):
            lines, done = a.cmd(command)
            assert (lines, done.split()[1]) == ([], b"BAD"), (command, lines, done)
        lines, done = a.cmd("SORT (DATE) KOI8-R ALL")
        assert done.split()[1:3] == [b"NO", b"[BADCHARSET"], done
        assert a.cmd("SORT (DATE) UTF-8 ALL")[0] == [b"* SORT 1"]
        assert a.cmd("THREAD REFERENCES UTF-8 ALL")[0] == [b"* THREAD (1)"]
        assert a.cmd("THREAD REFERENCES UTF-8 SUBJECT nothing")[0] == [b"* THREAD"]
        a.close()

    await trio.to_thread.run_sync(scenario)


@pytest.mark.parametrize("raw, text", [
    (b"=?\x00utf-8?q?caf=C3=A9?=", "caf\u00e9"),        # NUL in the charset name: read as UTF-8
    (b"=?x-no-such?q?caf=C3=A9?=", "caf\u00e9"),         # unknown charset: read as UTF-8
])
def test_encoded_words_with_bad_charsets_decode_as_utf8(raw: bytes, text: str) -> None:
    assert decode_words(raw) == text


async def test_sort_and_thread_answers_follow_every_change_of_the_selection(gateway):
    """SORT and THREAD answers are cached per process (issue 17): a message appended or
    expunged, or another numbering (UID SORT/THREAD), must never get a stale answer."""
    import trio

    from .conftest import message
    from .test_condstore import Raw

    gateway.deliver(message(1, subject="topic"))

    def reply(n: int, parent: int) -> bytes:
        return (f"From: b@example.org\r\nSubject: Re: topic\r\nMessage-ID: <m{n}@example.org>\r\n"
                f"In-Reply-To: <m{parent}@example.org>\r\n"
                f"Date: Tue, 14 Nov 2023 22:{n:02d}:00 +0000\r\n\r\nreply {n}\r\n").encode()

    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        a.cmd("SELECT INBOX")
        for _ in range(2):
            assert a.cmd("THREAD REFERENCES UTF-8 ALL")[0] == [b"* THREAD (1)"]
            assert a.cmd("SORT (REVERSE DATE) UTF-8 ALL")[0] == [b"* SORT 1"]
        for n, parent in ((2, 1), (3, 2)):
            data = reply(n, parent)
            assert a.cmd(f"APPEND INBOX {{{len(data)}+}}\r\n{data.decode()}")[1].split()[1] == b"OK"
        a.cmd("NOOP")
        assert a.cmd("THREAD REFERENCES UTF-8 ALL")[0] == [b"* THREAD (1 2 3)"]
        assert a.cmd("SORT (REVERSE DATE) UTF-8 ALL")[0] == [b"* SORT 1 3 2"]   # 1 is newest
        a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.cmd("EXPUNGE")
        # message 1 is gone: its reply heads the thread, now numbered 1 (UID 2)
        assert a.cmd("THREAD REFERENCES UTF-8 ALL")[0] == [b"* THREAD (1 2)"]
        assert a.cmd("UID THREAD REFERENCES UTF-8 ALL")[0] == [b"* THREAD (2 3)"]
        assert a.cmd("THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == [b"* THREAD (1 2)"]
        assert a.cmd("SORT (REVERSE DATE) UTF-8 ALL")[0] == [b"* SORT 2 1"]
        assert a.cmd("UID SORT (REVERSE DATE) UTF-8 ALL")[0] == [b"* SORT 3 2"]
        assert a.cmd("SORT (REVERSE DATE) UTF-8 SUBJECT nothing")[0] == [b"* SORT"]
        a.close()

    await trio.to_thread.run_sync(scenario)
