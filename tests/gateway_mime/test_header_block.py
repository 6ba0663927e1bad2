"""header_block: the one header reader, Dovecot 2.3.19's bound by header *values* (shapes at
Dovecot's own 10 MiB bound are compared live in tests/gateway_imapd/test_huge_header.py), and
its own bounds for hostile headers."""

from __future__ import annotations

import datetime as dt

from proxy.gateway import _parts as parts_module
from proxy.gateway import header_block, mime, sortkeys
from proxy.gateway._parts import MimeLimits, parse, part_table
from proxy.gateway.pop3_listing import internaldate
from proxy.gateway.preview import preview

BOUND = 64 * 1024
LIMITS = MimeLimits(max_header_bytes=BOUND)
# 65 lines of 1,000 value bytes: 65,000 values (under the bound), 65,975 bytes (over it)
LONG = b"".join(b"X-L%02d: %s\r\n" % (n, b"c" * 1000) for n in range(65))


def test_the_bound_counts_values_so_a_header_longer_in_bytes_is_read_whole():
    raw = b"Subject: one\r\n" + LONG + b"To: Bob <bob@example.org>\r\nSubject: two\r\n\r\nbody\r\n"
    assert len(raw[:raw.index(b"\r\n\r\n")]) > BOUND
    fields = header_block.fields(raw, BOUND)
    assert fields[-2:] == [(b"To", b"Bob <bob@example.org>"), (b"Subject", b"two")]
    # ENVELOPE keeps the last Subject (as Dovecot), SORT the first
    assert mime.envelope(raw, LIMITS) == (
        b'(NIL "two" NIL NIL NIL (("Bob" NIL "bob" "example.org")) NIL NIL NIL NIL)')
    assert sortkeys.extract(raw, BOUND).to == "BOB"   # i;unicode-casemap


def test_the_value_crossing_the_bound_is_cut_and_later_fields_are_empty():
    fill = b"X-F: " + b"f" * (BOUND - 10) + b"\r\n"   # 10 value bytes left
    raw = fill + b"Subject:  abcdefghijklmnop\r\nTo: t@example.org\r\nDate: x\r\n\r\nbody\r\n"
    # one blank after the colon is not value: " abcdefghi" takes the 10 bytes
    assert header_block.fields(raw, BOUND)[1:] == [
        (b"Subject", b"abcdefghi"), (b"To", b""), (b"Date", b"")]


def test_a_folded_value_is_cut_inside_its_continuation_lines():
    fill = b"X-F: " + b"f" * (BOUND - 12) + b"\r\n"   # 12 value bytes left
    raw = fill + b"Subject: ab\r\n cdef\r\n ghijkl\r\n mn\r\nTo: t\r\n\r\n"
    assert header_block.fields(raw, BOUND)[1:] == [
        (b"Subject", b"ab\r\n cdef\r\n ghij"), (b"To", b"")]


def test_lines_without_a_colon_or_with_an_overlong_name_are_all_value():
    name = b"N" * (header_block.NAME_MAX + 1)
    raw = b"NoColon\r\n" + name + b": v\r\nA: b\r\n\r\n"
    assert header_block.fields(raw, BOUND) == [(b"", b"NoColon"), (b"", name + b": v"), (b"A", b"b")]


def test_nul_and_8bit_bytes():
    raw = b"Subject: a\0b \xc3\xa9\xff\r\n\r\n"
    assert header_block.fields(raw, BOUND) == [(b"Subject", b"a\xef\xbf\xbdb \xc3\xa9\xff")]


def test_the_arrival_date_reads_the_same_fields():
    raw = (LONG + b"Received: from x by y; Tue, 4 Apr 2023 10:00:00 +0000\r\n"
           b"Date: Mon, 3 Apr 2023 10:00:00 +0000\r\n\r\n")
    assert internaldate(raw, BOUND) == dt.datetime(2023, 4, 4, 10, tzinfo=dt.timezone.utc)
    past = b"X-F: " + b"f" * BOUND + b"\r\n" + raw   # past the bound: both empty, so now
    assert internaldate(past, BOUND).year >= 2026


def test_many_fields_keep_the_first_and_latest_of_the_names_imap_reads():
    kept_whole = BOUND // header_block.FIELD_COST
    raw = (b"Subject: first\r\n" + b"A: 1\r\n" * (2 * kept_whole) + b"To: t1\r\nX-Gone: g\r\n"
           + b"Cc: c\r\n" * 1000 + b"To: t2\r\nSubject: last\r\n\r\n")
    fields = header_block.fields(raw, BOUND)
    assert len(fields) < kept_whole + 10
    assert fields[0] == (b"Subject", b"first")
    # per name, in order: the first and the latest past the fields kept whole
    assert [v for n, v in fields if n == b"To"] == [b"t1", b"t2"]
    assert [v for n, v in fields if n == b"Cc"] == [b"c", b"c"]
    assert [v for n, v in fields if n == b"Subject"] == [b"first", b"last"]
    assert (b"X-Gone", b"g") not in fields
    assert mime.envelope(raw, LIMITS).startswith(b'(NIL "last"')


def test_a_boundary_line_inside_a_part_header_still_ends_it():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nX-A: 1\r\n--b\r\n"
           b"Content-Type: text/html\r\n\r\nhi\r\n--b--\r\n")
    root = parse(raw, LIMITS)
    assert [c.headers for c in root.children] == [[(b"X-A", b"1")], [(b"Content-Type", b"text/html")]]


def test_hostile_headers_are_read_line_by_line_only_as_far_as_the_fields_kept_whole(monkeypatch):
    """Call counts, not timings: of two million tiny lines, or of a field folded over two
    million lines, only the lines of the ~BOUND/FIELD_COST fields kept whole and the names IMAP
    reads are looked at one by one; the values between them are counted in bulk."""
    calls = []
    line = header_block.Budget.line
    monkeypatch.setattr(header_block.Budget, "line", lambda *a: calls.append(1) or line(*a))
    kept_whole = BOUND // header_block.FIELD_COST
    tiny = b"Subject: s\r\n" + b"X: a\r\n" * 2_000_000 + b"To: t@example.org\r\n\r\nbody\r\n"
    folded = b"Subject: s" + b"\r\n a" * 2_000_000 + b"\r\nTo: t@example.org\r\n\r\nbody\r\n"
    for bound, raw, last in [(BOUND, tiny, b""), (10 << 20, tiny, b"t@example.org"),
                             (BOUND, folded, b""), (10 << 20, folded, b"t@example.org")]:
        calls.clear()
        assert header_block.fields(raw, bound)[-1] == (b"To", last)
        assert len(calls) <= bound // header_block.FIELD_COST + 3
        calls.clear()
        assert parse(raw, MimeLimits(max_header_bytes=bound)).headers[-1] == (b"To", last)
        assert len(calls) <= bound // header_block.FIELD_COST + 3
    assert kept_whole == 128


def test_a_message_of_many_small_parts_is_scanned_in_linear_work(monkeypatch):
    """Each part's header ended where the next blank line began, found by a search for LF LF and
    one for LF CR LF from there: a CRLF message has no LF LF (an LF one no LF CR LF), so each
    part's search ran to the message's end, O(parts x size): 10,000 parts of a 360 KB message
    took 5 s of CPU in ENVELOPE/BODYSTRUCTURE alone, 12 s with the search text and PREVIEW
    (all at ingest). The work is counted in bytes the header reader's searches may scan (its
    finds, counts and regex searches: `_AllScansCounting`)."""
    _count_header_scans(monkeypatch)
    for eol in (b"\r\n", b"\n"):
        parts = b"".join(b"--z" + eol + b"Content-Type: text/plain" + eol + eol + b"p" + eol
                         for _ in range(2000))
        raw = (b"Subject: parts" + eol + b"Content-Type: multipart/mixed; boundary=z" + eol +
               eol + parts + b"--z--" + eol)
        _AllScansCounting.scanned = 0
        root = parse(_AllScansCounting(raw), MimeLimits())
        assert len(root.children) == 2000
        assert _AllScansCounting.scanned <= 8 * len(raw), (eol, _AllScansCounting.scanned, len(raw))


class _AllScansCounting(bytes):
    """A message that counts the bytes its `find` and `count` calls and the blank-line regex
    may scan (from their start to the match's end, or to their end when there is none)."""

    scanned = 0

    def _add(self, start: int, stop: int, end: int) -> None:
        type(self).scanned += max(0, stop - start if stop >= 0 else end - start)

    def find(self, sub, start=0, end=None, /):   # type: ignore[override]
        stop = len(self) if end is None else min(end, len(self))
        at = super().find(sub, start, stop)
        self._add(start, at + len(sub) if at >= 0 else -1, stop)
        return at

    def count(self, sub, start=0, end=None, /):   # type: ignore[override]
        stop = len(self) if end is None else min(end, len(self))
        self._add(start, stop, stop)
        return super().count(sub, start, stop)


class _CountingPattern:
    def __init__(self, pattern):
        self.pattern = pattern

    def search(self, raw, start=0, end=None):
        end = len(raw) if end is None else min(end, len(raw))
        found = self.pattern.search(raw, start, end)
        _AllScansCounting.scanned += (found.end() if found else end) - start
        return found

    def finditer(self, raw, start=0):
        for found in self.pattern.finditer(raw, start):
            _AllScansCounting.scanned += found.end() - start
            start = found.end()
            yield found
        _AllScansCounting.scanned += len(raw) - start


def _count_header_scans(monkeypatch) -> None:
    for name in ("_BLANK", "_HEADER_STOP"):
        for module in (header_block, parts_module):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _CountingPattern(getattr(module, name)))


def test_headers_cut_short_by_boundaries_are_scanned_in_linear_work(monkeypatch):
    """Part headers that a boundary line ends (no blank line: Dovecot's rule) followed by a
    long tail with no blank line: each part's header reader searched for the blank line, and
    counted line ends, up to that far tail (9,000 such parts before 5 MB: 74 s of CPU at
    ingest). The searches now stop at the first blank line or boundary line."""
    _count_header_scans(monkeypatch)
    for eol in (b"\r\n", b"\n"):
        parts = b"".join(b"--z" + eol + b"X-A: b" + eol for _ in range(500))
        tail = (b"x" * 70 + eol) * 2000   # 140 KB, no blank line
        raw = (b"Subject: cut" + eol + b"Content-Type: multipart/mixed; boundary=z" + eol +
               eol + parts + b"--z" + eol + tail + b"--z--" + eol)
        _AllScansCounting.scanned = 0
        root = parse(_AllScansCounting(raw), MimeLimits())
        assert len(root.children) == 501
        first = raw.index(b"--z") + len(b"--z" + eol)
        step = len(b"--z" + eol + b"X-A: b" + eol)
        assert [(c.start, c.header_end, c.end) for c in root.children[:3]] == [
            (first + n * step, first + n * step + 6, first + n * step + 6) for n in range(3)]
        last = root.children[-1]   # its header is the tail's lines, cut by the closing boundary
        assert (last.start, last.header_end) == (first + 500 * step, len(raw) - len(eol) * 2 - 5)
        assert _AllScansCounting.scanned <= 8 * len(raw), (eol, _AllScansCounting.scanned, len(raw))


def test_cached_part_headers_cut_short_are_read_in_linear_work(monkeypatch):
    """PREVIEW from the cached part table reads each part's header again (`fill_headers`,
    `header_block.fields(raw, bound, start, end)`): its blank-line search ran past the part's
    end to the next blank line (9,000 image parts cut short before a 5 MB tail: 27 s)."""
    _count_header_scans(monkeypatch)
    for eol in (b"\r\n", b"\n"):
        parts = b"".join(b"--z" + eol + b"Content-Type: image/png" + eol for _ in range(500))
        tail = b"Content-Type: image/png" + eol + (b"x" * 70 + eol) * 2000   # no blank line
        raw = (b"Subject: cut" + eol + b"Content-Type: multipart/mixed; boundary=z" + eol +
               eol + parts + b"--z" + eol + tail + b"--z--" + eol)
        table = part_table(parse(raw, MimeLimits()))
        _AllScansCounting.scanned = 0
        assert preview(_AllScansCounting(raw), parts=table) == ""   # no text part
        assert _AllScansCounting.scanned <= 8 * len(raw), (eol, _AllScansCounting.scanned, len(raw))
        fields = header_block.fields(raw, 1000, raw.index(b"Content-Type: image"), len(raw) - 9)
        assert fields[0] == (b"Content-Type", b"image/png")


def test_a_part_header_read_to_its_end_is_read_as_without_the_limit():
    """`fields(raw, bound, start, end)` searches no further than `end`: for every `end` (inside
    the fields, the blank line's LF CR LF, the body) the same fields as the header cut where
    the unlimited search and `end` say."""
    raw = b"A: 1\r\nB: 2\n\r\nbody"
    for end in range(len(raw) + 1):
        whole = min(header_block.blank_line(raw, 0), end)
        assert header_block.fields(raw, 1000, 0, end) == header_block.fields(raw[:whole], 1000)
