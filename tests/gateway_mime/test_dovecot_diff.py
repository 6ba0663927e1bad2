"""Differential tests: our ENVELOPE / BODY / BODYSTRUCTURE / sections / SEARCH against a
real Dovecot serving the same corpus (tests/gateway_mime/corpus.py).

Every corpus message goes into one Dovecot account in CRLF form; replies are read as raw
bytes off imaplib's socket (wire.py) and compared byte for byte. Known irreducible
differences live in ALLOWED with a reason each; everything else must be equal.
"""

from __future__ import annotations

import datetime
import imaplib
import re
from dataclasses import dataclass

import pytest

from proxy.gateway import mime, search, sections
from proxy.imap._tokens import Atom

from . import corpus, wire

MESSAGES = corpus.corpus()

# (message name, item) -> why our output differs from Dovecot's. Keep it short and honest.
ALLOWED: dict[tuple[str, str], str] = {}

SECTIONS = [
    "", "HEADER", "TEXT", "1", "2", "3", "1.MIME", "2.MIME", "2.HEADER", "2.TEXT", "2.1", "1.1",
    "1.2", "2.1.2", "2.2", "HEADER.FIELDS (FROM SUBJECT)", "HEADER.FIELDS.NOT (FROM SUBJECT RECEIVED)",
    "HEADER.FIELDS (X-NOPE)", "1.HEADER", "2.HEADER.FIELDS (SUBJECT)", "9",
]

SEARCHES = [
    "FROM example.com", "FROM python.org", "TO zzz.org", "CC ann", "BCC nobody",
    "SUBJECT test", "SUBJECT needle-subj", "SUBJECT inner", "SUBJECT \"say \\\"hi\\\"\"",
    "BODY needle-qp", "BODY needle-b64", "BODY needle-softbreak", "BODY \"inner plain\"",
    "TEXT inner_needle", "TEXT needle", "HEADER X-Foo bar", "HEADER X-Empty \"\"", "HEADER Message-ID mid",
    "LARGER 5000", "SMALLER 300", "NOT LARGER 1000", "OR SUBJECT test FROM python", "NOT (FROM a TO b)",
    "OR (FROM python) (TO example)", "NOT OR SUBJECT a SUBJECT e",
    "SENTSINCE 1-Jan-2002", "SENTBEFORE 1-Jan-2001", "SENTON 7-Aug-2023", "1:5,40:*", "ALL UNDELETED",
]


@dataclass
class _View:
    seq: int
    uid: int
    flags: tuple
    internaldate: datetime.datetime
    size: int
    raw: bytes


@pytest.fixture(scope="module")
def imap(dovecot):
    user, password = dovecot.add_user()
    for _, raw in MESSAGES:
        dovecot.deliver(user, raw)
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(user, password)
    client.select("INBOX", readonly=True)
    yield client
    client.logout()


def _command(client: imaplib.IMAP4, command: bytes) -> list[bytes]:
    tag = b"d%d" % id(command)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    assert replies[-1].startswith(tag + b" OK"), replies[-1]
    return replies[:-1]


def _fetch(client: imaplib.IMAP4, items: bytes) -> dict[int, dict[bytes, bytes]]:
    out: dict[int, dict[bytes, bytes]] = {}
    for reply in _command(client, b"FETCH 1:* " + items):
        seq, values = wire.fetch_items(reply)
        out.setdefault(seq, {}).update({k.upper(): v for k, v in values.items()})
    return out


def _report(mismatches: list[str]) -> str:
    return f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])


def test_envelope_and_bodystructure_match_dovecot(imap):
    theirs = _fetch(imap, b"(ENVELOPE BODYSTRUCTURE BODY)")
    bad = []
    for seq, (name, raw) in enumerate(MESSAGES, 1):
        info = mime.from_cache(mime.analyze(raw))
        ours = {b"ENVELOPE": info.envelope, b"BODYSTRUCTURE": info.bodystructure, b"BODY": info.body}
        assert ours[b"ENVELOPE"] == mime.envelope(raw)
        assert ours[b"BODYSTRUCTURE"] == mime.bodystructure(raw)
        for item, value in ours.items():
            if value != theirs[seq][item] and (name, item.decode()) not in ALLOWED:
                bad.append(f"{name} {item.decode()}\n  dovecot {theirs[seq][item]!r}\n  ours    {value!r}")
    assert not bad, _report(bad)


def test_sections_match_dovecot(imap):
    items = b" ".join(b"BODY.PEEK[%s]" % s.encode() for s in SECTIONS)
    theirs = _fetch(imap, b"(" + items + b" BODY.PEEK[1]<2.5> BODY.PEEK[TEXT]<0.7> RFC822.SIZE)")
    bad = []
    for seq, (name, raw) in enumerate(MESSAGES, 1):
        parts = mime.analyze(raw)["parts"]
        wanted = [(s, None, b"BODY[%s]" % s.encode()) for s in SECTIONS]
        wanted += [("1", (2, 5), b"BODY[1]<2>"), ("TEXT", (0, 7), b"BODY[TEXT]<0>")]
        for section, partial, key in wanted:
            expected = wire.string_value(theirs[seq][key]) or b""
            got = sections.fetch_section(raw, section, partial, parts=parts)
            if got != expected and (name, section) not in ALLOWED:
                bad.append(f"{name} BODY[{section}]\n  dovecot {expected[:200]!r}\n  ours    {got[:200]!r}")
        if sections.fetch_section(raw, "RFC822.SIZE") != theirs[seq][b"RFC822.SIZE"]:
            bad.append(f"{name} RFC822.SIZE")
    assert not bad, _report(bad)


def _tokenize(text: str) -> list:
    """Enough of the IMAP argument syntax for SEARCHES: atoms, "quoted", (lists)."""
    tokens = re.findall(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+', text)
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(tuple(done))
        elif tok.startswith('"'):
            stack[-1].append(re.sub(r"\\(.)", r"\1", tok[1:-1]).encode())
        else:
            stack[-1].append(Atom(tok.encode()))
    return stack[0]


@pytest.mark.parametrize("criteria", SEARCHES)
def test_search_matches_dovecot(imap, criteria):
    reply = [r for r in _command(imap, b"SEARCH " + criteria.encode()) if r.startswith(b"* SEARCH")]
    theirs = [int(n) for n in reply[0].split()[2:]]
    key = search.parse_search(_tokenize(criteria))
    now = datetime.datetime.now()
    last = len(MESSAGES)
    ours = [seq for seq, (_, raw) in enumerate(MESSAGES, 1)
            if search.matches(key, _View(seq, seq, ("\\Recent",), now, len(raw), raw),
                              last_seq=last, last_uid=last)]
    names = {seq: name for seq, (name, _) in enumerate(MESSAGES, 1)}
    assert ours == theirs, [(n, names[n], n in theirs) for n in sorted(set(ours) ^ set(theirs))]


@pytest.mark.parametrize("count", [9_998, 9_999, 10_050])
def test_part_count_limit_like_dovecot(dovecot, count):
    """Past 10,000 parts (root included) Dovecot stops recognising boundaries: its last part runs
    to the end of the message. Ours too (MimeLimits.max_parts)."""
    user, password = dovecot.add_user()
    raw = corpus.crlf(corpus.many_parts(count))
    dovecot.deliver(user, raw)
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(user, password)
    client.select("INBOX", readonly=True)
    old, imaplib._MAXLINE = imaplib._MAXLINE, 8 << 20   # a 1.3 MB BODYSTRUCTURE line
    try:
        theirs = _fetch(client, b"(BODYSTRUCTURE)")[1][b"BODYSTRUCTURE"]
    finally:
        imaplib._MAXLINE = old
        client.logout()
    assert theirs == mime.bodystructure(raw)
