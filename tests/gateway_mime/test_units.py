"""Unit tests: sections on a hand-made message, SEARCH parsing and its errors, the cache."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

import pytest

from proxy.gateway import mime, search, sections
from proxy.imap._tokens import Atom

MSG = (
    b"From: a@example.com\r\nSubject: hi\r\n there\r\nX-Foo: 1\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b--\r\n"
)
MSG = MSG.replace(b"X-Foo: 1\r\n", b"X-Foo: 1\r\nContent-Type: multipart/mixed; boundary=b\r\n")


@pytest.mark.parametrize("section, partial, expected", [
    ("", None, MSG),
    ("HEADER.FIELDS (subject)", None, b"Subject: hi\r\n there\r\n\r\n"),
    ("HEADER.FIELDS (X-None)", None, b"\r\n"),
    ("HEADER.FIELDS.NOT (Subject Content-Type X-Foo)", None, b"From: a@example.com\r\n\r\n"),
    ("1", None, b"hello"),
    ("1.MIME", None, b"Content-Type: text/plain\r\n\r\n"),
    ("2", None, b"Subject: inner\r\n\r\ninner body"),
    ("2.HEADER", None, b"Subject: inner\r\n\r\n"),
    ("2.TEXT", None, b"inner body"),
    ("2.1", None, b"inner body"),
    ("3", None, b""),
    ("1", (1, 3), b"ell"),
    ("RFC822.HEADER", None, MSG[:MSG.index(b"\r\n\r\n") + 4]),
    ("RFC822.SIZE", None, b"%d" % len(MSG)),
])
def test_sections(section, partial, expected):
    assert sections.fetch_section(MSG, section, partial) == expected
    parts = mime.from_cache(json.dumps(mime.analyze(MSG)).encode()).parts
    assert sections.fetch_section(MSG, section, partial, parts=parts) == expected


@pytest.mark.parametrize("bad", ["0", "1.0", "HEADER.FIELDS", "TEXT (A)", "FOO", "MIME"])
def test_bad_sections(bad):
    with pytest.raises(sections.SectionError):
        sections.fetch_section(MSG, bad)


def test_bare_lf_is_sent_as_crlf():
    assert sections.fetch_section(b"A: b\n\nx\ny\n", "TEXT") == b"x\r\ny\r\n"


@pytest.mark.parametrize("args, code", [
    ([], None),
    ([Atom(b"FOO")], None),
    ([Atom(b"LARGER")], None),
    ([Atom(b"LARGER"), Atom(b"x")], None),
    ([Atom(b"SINCE"), b"31-Foo-2020"], None),
    ([Atom(b"1:x")], None),
    ([Atom(b"0")], None),
    ([Atom(b"OR"), Atom(b"ALL")], None),
    ([()], None),
    ([Atom(b"SUBJECT"), b"\xff"], None),
    ([Atom(b"CHARSET"), Atom(b"KOI8-R"), Atom(b"ALL")], "BADCHARSET (UTF-8 US-ASCII)"),
])
def test_search_parse_errors(args, code):
    with pytest.raises(search.SearchError) as err:
        search.parse_search(args)
    assert err.value.code == code


@dataclass
class View:
    seq: int = 3
    uid: int = 30
    flags: tuple = ("\\Seen", "$Work")
    internaldate: datetime.datetime = datetime.datetime(2024, 5, 1, 12, 0)
    size: int = 100
    raw: bytes = b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.org>\r\nSubject: Hallo\r\n\r\nK\xc3\xb6rper\r\n"


@pytest.mark.parametrize("args, expected", [
    ([Atom(b"CHARSET"), Atom(b"utf-8"), Atom(b"FROM"), "jürgen".encode()], True),
    ([Atom(b"BODY"), "KÖRPER".encode()], True),
    ([Atom(b"KEYWORD"), Atom(b"$work")], True),
    ([Atom(b"NEW")], False),
    ([Atom(b"2:*")], True),
    ([Atom(b"UID"), Atom(b"1:29")], False),
    ([(Atom(b"SEEN"), Atom(b"SMALLER"), Atom(b"101")), Atom(b"ON"), b"1-May-2024"], True),
    ([Atom(b"NOT"), Atom(b"OR"), Atom(b"DELETED"), Atom(b"DRAFT")], True),
])
def test_search_matches(args, expected):
    assert search.matches(search.parse_search(args), View(), last_seq=3, last_uid=30) is expected


def test_cache_round_trip():
    info = mime.from_cache(json.dumps(mime.analyze(MSG)).encode())
    assert info.envelope == mime.envelope(MSG)
    assert info.bodystructure == mime.bodystructure(MSG)
    assert info.body == mime.bodystructure(MSG, extended=False)
    assert info.size == len(MSG)


def test_mime_limits_make_deeper_parts_opaque_leaves():
    from proxy.gateway.mime import MimeLimits, bodystructure, parse

    raw = (b"Content-Type: message/rfc822\r\n\r\n" * 3) + b"Subject: leaf\r\n\r\nleaf\r\n"
    assert bodystructure(raw, extended=False, limits=MimeLimits(max_depth=2)) == (
        b'("message" "rfc822" NIL NIL NIL "7bit" 87 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("application" "octet-stream" NIL NIL NIL "7bit" 55) 7)')
    root = parse(raw, MimeLimits(max_depth=2))
    assert root.children[0].opaque and root.children[0].children == []
    many = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + b"--b\r\n\r\nx\r\n" * 5 + b"--b--\r\n"
    tree = parse(many, MimeLimits(max_parts=3))
    assert len(tree.children) == 2 and tree.children[-1].end == len(many)   # the last runs to EOF


def test_mime_limits_are_checked():
    import pytest

    from proxy.gateway.mime import MimeLimits

    for bad in ({"max_depth": 0}, {"max_depth": 201}, {"max_parts": 0}):
        with pytest.raises(ValueError):
            MimeLimits(**bad)
