"""Work of the gateway's message analysis on hostile messages, counted (never timed): each test
pins a cost that grew faster than needed, found by bench/fuzz/growth.py or the atheris harness
(bench/fuzz/atheris_analysis.py)."""

from __future__ import annotations

import gc
import random
import tracemalloc
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.gateway import _addresses, _parts, address_text, analysis, mime, search, search_text, sortkeys
from proxy.gateway._addresses import AddressParser
from proxy.gateway.basesubject import casemap
from proxy.imap import Atom


def _addresses_made(monkeypatch, function, *args) -> int:
    made = 0
    found = _addresses.AddressParser._found

    def counted(self, address):
        nonlocal made
        made += 1
        found(self, address)

    monkeypatch.setattr(_addresses.AddressParser, "_found", counted)
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
    p = _parts.Rfc822(value)
    p.content_type()
    _Counted.copied = 0
    assert _parts.rfc2231_params(p) == [(b"a*", b"xxxxxxxx" * 4000)]
    assert _Counted.copied == 0   # before: 64,016,000 (the merged value copied per piece)


# -- ENVELOPE of huge address lists (tenth session) --------------------------------------------

def test_an_envelope_field_lists_at_most_the_bound_of_addresses(monkeypatch):
    """A From of commas is one empty address per byte, each a 44-byte ENVELOPE record (From,
    Sender and Reply-To alike): 10 MiB of commas made a 1.4 GB ENVELOPE. Dovecot writes them
    all; the gateway writes `max_envelope_addresses` per field and parses no further."""
    raw = b"From: " + b"," * 30000 + b"\r\nTo: a@b.c, d@e.f, g@h.i\r\n\r\nx\r\n"
    limits = mime.MimeLimits(max_envelope_addresses=2)
    assert _addresses_made(monkeypatch, mime.envelope, raw, limits) == 2 + 2
    empty = b'(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")'
    from_ = b"(" + empty * 2 + b")"   # and as Sender and Reply-To (RFC 3501 7.4.2)
    assert mime.envelope(raw, limits) == b"(NIL NIL " + b" ".join([from_] * 3) \
        + b' ((NIL NIL "a" "b.c")(NIL NIL "d" "e.f")) NIL NIL NIL NIL)'
    default = mime.envelope(raw)
    assert default.count(b'"MISSING_MAILBOX"') == 3 * mime.DEFAULT_LIMITS.max_envelope_addresses
    assert b'(NIL NIL "g" "h.i")' in default


def _nested(parts: int, commas: int) -> bytes:
    """A message of `parts` message/rfc822 parts, each with a From of `commas` commas."""
    one = b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: " + b"," * commas + b"\r\n\r\nx\r\n"
    return (b"From: a@b\r\nTo: c@d, e@f\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + one * parts + b"--b--\r\n")


def test_the_envelopes_of_a_message_share_one_bound_of_addresses(monkeypatch):
    """The per-field bound alone let each message/rfc822 part write its own: a 400 KB message
    of 40 parts whose From is 10,000 commas was a 115 MB analysis (418 MB of peak memory), each
    part's 10,000 records written three times (From, Sender, Reply-To) in BODYSTRUCTURE and in
    BODY. All the ENVELOPEs of an analysis now list at most 6 x the bound together, the
    message's own first (whole: 6 fields of at most the bound), and a field at least one record
    once that is spent."""
    limits = mime.MimeLimits(max_envelope_addresses=100)
    raw = _nested(40, 1000)
    # the message's own: 1 + 2; then the parts: 5 x 100, 97 (the 600 spent), 34 x 1, in
    # BODYSTRUCTURE and in BODY
    assert _addresses_made(monkeypatch, mime.analyze, raw, limits) == 3 + 2 * (500 + 97 + 34)
    data = mime.analyze(raw, limits)
    for written in (data["bodystructure"], data["body"]):
        assert written.count('"MISSING_MAILBOX"') == 3 * (500 + 97 + 34)   # From, Sender, Reply-To
    assert data["envelope"] == '(NIL NIL ((NIL NIL "a" "b")) ((NIL NIL "a" "b")) ((NIL NIL "a" "b"))'\
                               ' ((NIL NIL "c" "d")(NIL NIL "e" "f")) NIL NIL NIL NIL)'
    assert mime.bodystructure(raw, True, limits).decode("latin-1") == data["bodystructure"]
    assert mime.bodystructure(raw, False, limits).decode("latin-1") == data["body"]
    assert data["ecut"] == 100   # cut: current under this bound only
    whole = mime.analyze(_nested(3, 10), limits)   # 3 + 30 records: whole under any bound > 10
    assert (whole["ecut"], whole["eneed"]) == (None, 10)
    default = len(analysis.analyze_for_store(_nested(40, 10000)))
    assert default < 20_000_000, default   # 6 x 10,000 records, 44 bytes, 3 times, twice


def test_repeated_fields_share_the_bound_and_a_cut_group_is_closed():
    raw = (b"To: a@b.c, d@e.f\r\nTo: team: x@y.z, u@v.w, s@t.u;\r\nCc: g@h.i\r\n\r\nx\r\n")
    limits = mime.MimeLimits(max_envelope_addresses=4)
    env = mime.envelope(raw, limits)
    assert b'((NIL NIL "a" "b.c")(NIL NIL "d" "e.f")(NIL NIL "team" NIL)(NIL NIL "x" "y.z")'\
           b'(NIL NIL NIL NIL))' in env
    assert b'((NIL NIL "g" "h.i"))' in env
    whole = mime.envelope(raw)
    assert b'(NIL NIL "s" "t.u")(NIL NIL NIL NIL))' in whole


def test_identical_addresses_are_written_once(monkeypatch):
    """ENVELOPE formats each distinct address once per field: a list of commas is one."""
    calls = 0
    nstring = mime.nstring

    def counted(value):
        nonlocal calls
        calls += 1
        return nstring(value)

    monkeypatch.setattr(mime, "nstring", counted)
    mime.envelope(b"To: " + b"," * 5000 + b"\r\n\r\nx\r\n")
    assert calls <= 3 * 3   # route, mailbox, domain of the one distinct address (and subject..)


def test_addresses_are_tuples_the_collector_lets_go():
    """An object per address (a dataclass: two tracked objects) was walked by every collection
    while a list of millions grew. Plain tuples of bytes are untracked at the collector's first
    pass."""
    addresses = AddressParser(b"a@b.c, Name <d@e.f>, (c) g@h, ,, grp: x@y;" * 50).parse()
    gc.collect()
    assert addresses and not any(gc.is_tracked(a) for a in addresses)


_LIST_TOKENS = _TOKENS + ["a@b", "a.b@c.d", ", ", "a..b@c.", "\t,", "é@x", "x@y\r\n ,"]


def test_the_fast_path_gives_what_the_walk_gives(monkeypatch):
    """`AddressParser._bare` (an empty address or a bare local@domain, one pattern) against
    the full message-address.c walk, on many random lists."""
    rng = random.Random(20261207)
    values = ["".join(rng.choice(_LIST_TOKENS) for _ in range(rng.randint(0, 25))).encode()
              for _ in range(4000)]
    fast = [AddressParser(v).parse() for v in values]
    monkeypatch.setattr(AddressParser, "_bare", lambda self: None)
    assert [AddressParser(v).parse() for v in values] == fast


def test_header_fields_without_encoded_words_are_not_decoded(monkeypatch):
    """SEARCH TEXT's header text (`text_blobs`): `email` built a Header per field to decode
    RFC 2047 words (~5 us a field, 20,000 fields kept of a hostile header); a value without
    "=?" has none and is its own decoding. Counted: the fields handed to the decoder."""
    decoded = []
    decode = search_text.decode_header

    def counted(value):
        decoded.append(value)
        return decode(value)

    monkeypatch.setattr(search_text, "decode_header", counted)
    raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" + b"a: b\r\n" * 3000 + b"X: 1 =? 2\r\n\r\nx\r\n"
    header, _ = search_text.text_blobs(raw)
    assert decoded == ["=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "1 =? 2"]
    assert header == casemap("Subject: Grüße\n" + "a: b\n" * 3000 + "X: 1 =? 2")


def test_a_repeated_address_search_reads_the_list_once(monkeypatch):
    """SEARCH FROM/TO/CC/BCC parsed the whole address list of every message on every search
    (6 s per MB of commas). The case-mapped text is cached by the header value: counted, the
    lists parsed by two searches of one message, each with a fresh context as a session has."""
    parsed = []
    parse = _addresses.AddressParser.parse

    def counted(self, limit=-1):
        parsed.append(self.p.data)
        return parse(self, limit)

    monkeypatch.setattr(_addresses.AddressParser, "parse", counted)
    raw = b"From: Ann <ann@example.org>" + b", " * 5000 + b"\r\nTo: bob@x.y\r\n\r\nx\r\n"
    msg = _Message(raw)
    key = search.parse_search([Atom(b"FROM"), b"ann@example.org", Atom(b"TO"), b"BOB@"])
    assert search.matches(key, msg) and search.matches(key, msg)
    assert sorted(parsed) == sorted([raw[6:raw.index(b"\r\n")], b"bob@x.y"])
    assert not search.matches(search.parse_search([Atom(b"FROM"), b"nobody"]), msg)
    assert len(parsed) == 2


def test_the_address_text_cache_holds_at_most_its_bound():
    cache = address_text.TextCache(budget=2400)
    values = [f"user{n}@example.org" for n in range(100)] + ["x@y, z@w, " * 15]
    for value in values:
        assert cache.contains(value, "USER") == value.startswith("user")
        assert cache.held <= 2400
    assert cache.held == sum(address_text.weight(v, t) for v, (t, _) in cache._texts.items())
    assert values[-1] not in cache._texts   # over a quarter of the bound: never kept
    assert list(cache._texts)[-1] == values[-2]


_SHAPES = [lambda n: f"User {n} <user{n}@example.com>", lambda n: f"J\xf6rg {n} <j{n}@example.com>",
           lambda n: f"\u03a3 {n} <s{n}@example.com>", lambda n: f"\U0001F600 {n} <e{n}@x.com>",
           lambda n: f"a{n}@b", lambda n: ", ".join(f"u{n}x{k}@example.org" for k in range(20))]


@pytest.mark.parametrize("shape", range(len(_SHAPES)),
                         ids=["ascii", "latin-1", "bmp", "astral", "short", "list"])
def test_the_address_text_cache_bound_is_the_memory_it_holds(shape):
    """The bound is memory as tracemalloc counts it (values, texts and the entries that hold
    them), not characters: at 32 Mi characters the cache held ~143 MiB of ASCII addresses
    and more of others (1 to 4 bytes a character). Filled past its bound with one shape of
    address, the cache holds no more than it counts, and counts no more than its bound."""
    budget = 1024 * 1024
    make = _SHAPES[shape]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = address_text.TextCache(budget)
        n = 0
        while n < 100 or n < 3 * len(cache._texts):   # full, then twice its entries gone
            cache.contains(make(n), "USER")
            n += 1
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert budget - 8192 < cache.held <= budget
    assert held <= budget, f"{held} bytes held for a bound of {budget}"


def test_a_list_of_commas_is_kept_small_and_searched_without_parsing(monkeypatch):
    """A From of 256 KB of commas is 8.4 million characters of address text: too big to keep,
    so every search parsed it again (1.2 s of CPU per MB). Runs of one address are kept cut."""
    value = "," * 262144
    text, longest = address_text.collapsed(value)
    assert text == ", ".join(["MISSING_MAILBOX@MISSING_DOMAIN"] * address_text.RUN_KEPT)
    cache = address_text.TextCache(address_text.ADDRESS_TEXT_BYTES)
    assert cache.contains(value, "MISSING_DOMAIN, MISSING_MAILBOX")
    parsed = []
    monkeypatch.setattr(address_text, "_items", lambda value: parsed.append(value))
    assert not cache.contains(value, "NOBODY") and cache.contains(value, "G_DOMAIN, MISS")
    assert parsed == []


_RUN_TOKENS = ["a@b", "x@y.z", ",", ", ", "Ann <a@b>", "(c) d@e", "g: h@i;", "\xe9@x", "ß@SS",
               "=?utf-8?q?J=C3=B6rg?= <j@k>"]


def test_a_cut_text_answers_what_the_whole_text_answers():
    """`collapsed` against `casemap(address_text(...))` on random lists with long runs of
    identical addresses, needles taken from the whole text (within and across runs, long and
    short) and random ones; a needle longer than the cut allows reads the list again."""
    rng = random.Random(20261207)
    cache = address_text.TextCache(address_text.ADDRESS_TEXT_BYTES)
    for _ in range(300):
        value = ", ".join(rng.choice(_RUN_TOKENS) if rng.random() < 0.5 else
                          ", ".join([rng.choice(_RUN_TOKENS)] * rng.randint(60, 200))
                          for _ in range(rng.randint(1, 4)))
        whole = casemap(address_text.address_text(value))
        for _ in range(20):
            start = rng.randrange(len(whole) + 1)
            needle = whole[start:start + rng.choice([1, 5, 40, 300, 5000])]
            if rng.random() < 0.3:
                needle = needle[:-1] + rng.choice("AB,;@ ") if needle else "@"
            assert cache.contains(value, needle) == (needle in whole), (value[:80], needle[:80])
class _Message:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.seq, self.uid, self.flags, self.size = raw, 1, 1, (), len(raw)


# -- search texts that case mapping lengthens (eleventh session) ------------------------------

_MAPPING_ALPHABET = ["a", "Z", " ", "\n", "\u0301", "\u0308", "\u0323", "\u0345", "\xe9", "\xc5",
                     "\u01d6", "\u0f73", "\u0344", "\uac00", "\ud55c", "\ufdfa", "\xdf", "\xbd",
                     "\u1e9e", "\u01c5", "\u03a3", "\ufb03"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_a_search_text_mapped_in_chunks_is_the_whole_texts_mapping(monkeypatch, chunk):
    """bounded_casemap maps a text in chunks that end before a starter: joined, they are the
    mapping of the whole (NFKD reorders combining marks, never across a starter), and cut, its
    first characters. Random texts of combining marks (several classes), characters that
    decompose into them or start with one (U+0F73, U+0344), Hangul, ß, U+FDFA."""
    monkeypatch.setattr(search_text, "_MAP_CHUNK", chunk)
    rng = random.Random(chunk)
    for _ in range(3000):
        text = "".join(rng.choice(_MAPPING_ALPHABET) for _ in range(rng.randint(0, 24)))
        whole = casemap(text)
        assert search_text.bounded_casemap(text, 10_000) == whole, ascii(text)
        cap = rng.randint(0, len(whole) + 2)
        assert search_text.bounded_casemap(text, cap) == whole[:cap], (ascii(text), cap)


def test_a_search_text_is_at_most_its_messages_length():
    """U+FDFA (3 bytes) case-maps to 18 characters: a 5 MB message of it was a 163 MB analysis
    (367 MB of peak memory), 100 MB (the POP3 bound) 3.2 GB. The search text stops at the
    message's length (plus TEXT_SLACK) and the beginning is still found; text that case mapping
    does not lengthen past its bytes (Hangul, accents, ligatures) is kept whole."""
    head = b"From: a@b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    raw = head + "first words ".encode() + ("\ufdfa" * 100_000).encode()
    header_text, body_text = search_text.text_blobs(raw)
    assert len(body_text) == len(raw) + 64 * 1024   # search_text.TEXT_SLACK
    assert body_text.startswith("FIRST WORDS " + casemap("\ufdfa"))
    for body in ("\ud55c\uad6d\uc5b4 \xe9t\xe9 \ufb03 \xbd " * 20_000, "\u0f73\u0344\u0301" * 50_000):
        raw = head + body.encode()
        assert search_text.text_blobs(raw)[1] == casemap(body)


def test_case_mapping_sorts_runs_of_at_most_thirty_combining_marks(monkeypatch):
    """NFKD sorts a run of combining marks by class in time quadratic in the run (40,000
    alternating U+0301 U+0323 took 1.2 s, a 1 MB body minutes, holding the interpreter). As in
    UAX #15's Stream-Safe Text Format, a run longer than 30 gets U+034F after every 30, so NFKD
    is never handed a longer one; BMP and astral marks (U+1D165) alike; shorter runs unchanged."""
    from proxy.gateway import basesubject

    longest = 0
    normalize = basesubject.unicodedata.normalize

    class Counted:
        @staticmethod
        def normalize(form: str, text: str) -> str:
            nonlocal longest
            run = 0
            for char in text:
                run = run + 1 if unicodedata.combining(normalize("NFKD", char)[0]) else 0
                longest = max(longest, run)
            return normalize(form, text)

    monkeypatch.setattr(basesubject, "unicodedata", Counted)
    for marks in ("\u0301\u0323", "\U0001d165\u0301", "\u0f73"):
        mapped = casemap("a" + marks * 20_000 + "b")
        assert longest <= 30, (ascii(marks), longest)   # basesubject.STREAM_SAFE_RUN
        assert mapped.count("\u034f") == -(-len(marks) * 20_000 // 30) - 1
    longest = 0
    assert casemap("x\u0301\u0323" * 10) == normalize("NFKD", "X\u0301\u0323" * 10)


def test_search_on_a_header_maps_at_most_four_characters_per_character(monkeypatch):
    """SEARCH SUBJECT case-maps the Subject on every search: one of U+FDFA (18 characters
    each once mapped) up to the header bound was 60 million characters a message a search.
    The mapping stops at 4 per character of the value (plus a chunk), which no script's text
    reaches; the words before the cut are found."""
    from proxy.gateway import basesubject

    mapped = 0
    normalize = basesubject.unicodedata.normalize

    class Counted:
        combining = staticmethod(unicodedata.combining)

        @staticmethod
        def normalize(form: str, text: str) -> str:
            nonlocal mapped
            out = normalize(form, text)
            mapped += len(out)
            return out

    value = "first " + "\ufdfa" * 300_000
    msg = _Message(b"Subject: " + value.encode() + b"\r\n\r\nx\r\n")
    monkeypatch.setattr(basesubject, "unicodedata", Counted)
    assert search.matches(search.parse_search([Atom(b"SUBJECT"), b"first"]), msg)
    assert mapped <= 4 * len(value) + 1024 + 18 * 64 * 1024, mapped
