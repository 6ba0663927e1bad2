"""UTF8=ACCEPT (RFC 6855) against Dovecot IMAP.

Dovecot 2.3 does not offer UTF8=ACCEPT, so the differential compares what both servers must
agree on: the same mailbox tree, built with the same commands, where the gateway (after ENABLE
UTF8=ACCEPT) is sent each name as UTF-8 and Dovecot the same name in modified UTF-7 (encoded
by imapclient's encoder, not ours). Every LIST/LSUB/STATUS/SELECT answer must then be the same
entries, once each server's names are decoded by the other encoding's independent decoder
(imapclient for Dovecot's modified UTF-7, Python's for the gateway's UTF-8); and the gateway
must send UTF-8 as quoted strings, never modified UTF-7. A second gateway session that did not
ENABLE sees byte-for-byte what Dovecot sends (RFC 6855: nothing changes before ENABLE).

A message with raw UTF-8 headers appended with `UTF8 (~{n}...)` (RFC 6855 4) must then read
back (ENVELOPE, BODYSTRUCTURE, header, size) and search (RFC 6855 3: SEARCH strings are UTF-8,
no CHARSET) exactly as the same bytes appended to Dovecot as a plain literal.
"""

from __future__ import annotations

import imaplib
import itertools
import re

import trio
from gateway_mime import wire
from imapclient import imap_utf7

from .conftest import message
from .test_list_differential import _entries

NAMES = ["Grüße", "Été", "Été/Août 2025", "日本語", "日本語/メール", "A&B", "Ünïcödé"]
SUBSCRIBED = ["Grüße", "Été/Août 2025", "日本語/メール", "A&B"]
APPENDS = {"Grüße": 1, "日本語/メール": 2, "A&B": 1}
# (command, names substituted for {0}, {1}...); each name sent in the server's own encoding
COMMANDS = [
    ('LIST "" "*"', []),
    ('LIST "" "%"', []),
    ('LIST "" "{0}/%"', ["Été"]),
    ('LIST "{0}/" "*"', ["日本語"]),
    ('LIST "" "{0}*"', ["Gr"]),
    ('LSUB "" "*"', []),
    ('LSUB "" "%"', []),
    ('LIST (SUBSCRIBED) "" "*"', []),
    ('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"', []),
    ('LIST "" "*" RETURN (CHILDREN STATUS (MESSAGES UIDNEXT))', []),
    ('LIST "" ("{0}" "{1}/*")', ["A&B", "日本語"]),
    ('STATUS "{0}" (MESSAGES UIDNEXT UNSEEN)', ["Grüße"]),
    ('STATUS "{0}" (MESSAGES SIZE)', ["日本語/メール"]),
    ('RENAME "{0}" "{1}"', ["Grüße", "Grüße alt"]),
    ('LIST "" "Gr*"', []),
    ('DELETE "{0}"', ["Ünïcödé"]),
    ('CREATE "{0}"', ["Ωmega"]),
    ('SUBSCRIBE "{0}"', ["Ωmega"]),
    ('LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN)', []),
]
_tags = itertools.count(1)
# the mailbox name of a LIST/LSUB line (after the delimiter) or of a STATUS line
_LIST_NAME = re.compile(rb'^(\* (?:LIST|LSUB) \([^)]*\) "/" )("(?:[^"\\]|\\.)*"|[^ ]+)(.*)$', re.S)
_SPECIAL_USE = re.compile(rb" \\(?:Archive|Drafts|Junk|Sent|Trash)(?=[ )])")
_STATUS_NAME = re.compile(rb'^(\* STATUS )("(?:[^"\\]|\\.)*"|[^ ]+)( \(.*)$', re.S)


def _run(client: imaplib.IMAP4, command: bytes) -> tuple[list[bytes], bytes]:
    tag = b"u%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    return replies[:-1], replies[-1]


def _ok(client: imaplib.IMAP4, command: bytes) -> list[bytes]:
    lines, done = _run(client, command)
    assert done.split()[1] == b"OK", (command, done)
    return lines


def _command(template: str, names: list[str], utf8: bool) -> bytes:
    if utf8:
        return template.format(*names).encode()
    return template.format(*(imap_utf7.encode(n).decode("ascii") for n in names)).encode()


def _unquote(token: bytes) -> bytes:
    if token.startswith(b'"'):
        return re.sub(rb'\\(.)', rb"\1", token[1:-1])
    return token


def _plain(line: bytes) -> bytes:
    """Without special-use attributes (Dovecot's test config declares none)."""
    return _SPECIAL_USE.sub(b"", line.rstrip(b"\r\n"))


def _decoded(lines: list[bytes], utf8: bool) -> list[bytes]:
    """Each line with its mailbox name decoded to text, shown as <<name>>."""
    out = []
    for line in map(_plain, lines):
        match = _LIST_NAME.match(line) or _STATUS_NAME.match(line)
        if match is None:
            out.append(line)
            continue
        head, token, tail = match.groups()
        raw = _unquote(token)
        text = raw.decode("utf-8") if utf8 else imap_utf7.decode(raw)
        out.append(head + b"<<" + text.encode("utf-8") + b">>" + tail)
    return out


def _build(client: imaplib.IMAP4, utf8: bool, parents: bool) -> None:
    for name in NAMES:
        lines, done = _run(client, _command('CREATE "{0}"', [name], utf8))
        # the gateway creates the parents itself (RFC 3501 6.3.3 SHOULD); they come first here
        assert done.split()[1] == b"OK" or (parents and b"ALREADYEXISTS" in done), done
    for name in SUBSCRIBED:
        _ok(client, _command('SUBSCRIBE "{0}"', [name], utf8))
    for name, count in APPENDS.items():
        for n in range(count):
            raw = message(200 + n, body="z" * (n * 100))
            _ok(client, _command('APPEND "{0}" ', [name], utf8) + b"{%d+}\r\n" % len(raw) + raw)


def _dovecot(gateway) -> imaplib.IMAP4:
    theirs = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port, timeout=30)
    theirs.login(gateway.user, gateway.password)
    _ok(theirs, b"SUBSCRIBE INBOX")
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):   # the gateway's defaults
        _ok(theirs, b"CREATE " + name.encode())
        _ok(theirs, b"SUBSCRIBE " + name.encode())
    return theirs


async def test_utf8_names_answer_like_dovecot_in_modified_utf7(gateway):
    gateway.deliver(message(1))

    def compare() -> list[str]:
        ours, plain, theirs = gateway.imaplib(), gateway.imaplib(), _dovecot(gateway)
        caps = _ok(ours, b"CAPABILITY")[0]
        assert b" UTF8=ACCEPT" in caps and b"UTF8=ONLY" not in caps, caps
        assert _ok(ours, b"ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT\r\n"]
        _build(ours, utf8=True, parents=True)
        _build(theirs, utf8=False, parents=False)
        bad = []
        for template, names in COMMANDS:
            want_lines, want_done = _run(theirs, _command(template, names, utf8=False))
            got_lines, got_done = _run(ours, _command(template, names, utf8=True))
            want, got = _entries(_decoded(want_lines, False)), _entries(_decoded(got_lines, True))
            if (want, want_done.split()[1]) != (got, got_done.split()[1]):
                bad.append(f"{template} {names}\n  dovecot {want} {want_done!r}\n"
                           f"  gateway {got} {got_done!r}")
            # before ENABLE nothing changes: the same bytes as Dovecot (names in modified UTF-7)
            if not template.startswith(("RENAME", "DELETE", "CREATE", "SUBSCRIBE")):
                mine = _entries([_plain(x) for x in _run(plain, _command(template, names, False))[0]])
                if mine != _entries(want_lines):
                    bad.append(f"(no ENABLE) {template}\n  dovecot {_entries(want_lines)}\n"
                               f"  gateway {mine}")
        # the wire form after ENABLE: UTF-8 in a quoted string, "&" an ordinary character
        assert _ok(ours, b'LIST "" "A&*"') == [b'* LIST (\\HasNoChildren) "/" A&B\r\n']
        assert _ok(ours, 'LIST "" "日本語/%"'.encode()) == [
            '* LIST (\\HasNoChildren) "/" "日本語/メール"\r\n'.encode()]
        assert _ok(plain, b'LIST "" "A&-*"') == [b'* LIST (\\HasNoChildren) "/" A&-B\r\n']
        for name in ("日本語/メール", "Été/Août 2025"):   # SELECT by the UTF-8 name
            want = [x for x in _ok(theirs, _command('EXAMINE "{0}"', [name], False))
                    if x.endswith(b"EXISTS\r\n")]
            assert [x for x in _ok(ours, _command('EXAMINE "{0}"', [name], True))
                    if x.endswith(b"EXISTS\r\n")] == want
        for client in (ours, plain, theirs):
            client.logout()
        return bad

    bad = await trio.to_thread.run_sync(compare)
    assert not bad, f"{len(bad)} differ:\n" + "\n".join(bad)


HEADERS = ("From: Jörg Müller <joerg@example.org>\r\nTo: Zoë <zoe@example.org>\r\n"
           "Subject: Grüße aus Köln – 日本語\r\nDate: Fri, 17 May 2024 10:30:00 +0200\r\n"
           "Message-ID: <utf8-1@example.org>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
INTL = (HEADERS + "Schöne Grüße.\r\n").encode()
FETCH = b"FETCH 1 (ENVELOPE BODYSTRUCTURE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"


async def test_append_utf8_data_and_search_like_dovecot(gateway):
    def compare() -> None:
        ours, theirs = gateway.imaplib(), _dovecot(gateway)
        _ok(ours, b"ENABLE UTF8=ACCEPT")
        for client in (ours, theirs):
            _ok(client, b"CREATE Intl")
        _ok(ours, b"APPEND Intl UTF8 (~{%d+}\r\n" % len(INTL) + INTL + b")")
        _ok(theirs, b"APPEND Intl {%d+}\r\n" % len(INTL) + INTL)
        for client in (ours, theirs):
            _ok(client, b"SELECT Intl")
        (got,), (want,) = _ok(ours, FETCH), _ok(theirs, FETCH)
        assert wire.fetch_items(got) == wire.fetch_items(want)   # in any order
        for words in ("Grüße", "Köln", "日本語", "Müller", "Zoë", "Schöne"):
            key = "FROM" if words == "Müller" else "TO" if words == "Zoë" else \
                "BODY" if words == "Schöne" else "SUBJECT"
            literal = words.encode()
            want = _ok(theirs, b"SEARCH CHARSET UTF-8 %s {%d+}\r\n" % (key.encode(), len(literal))
                       + literal)
            # RFC 6855 3: after ENABLE the strings are UTF-8, in quoted strings, without CHARSET
            assert _ok(ours, f'SEARCH {key} "{words}"'.encode()) == want == [b"* SEARCH 1\r\n"]
        # mapped as RFC 5051 i;unicode-casemap and Dovecot do: "ß" is not "ss"
        for words, found in (("grüße", b" 1"), ("Grüßli", b""), ("GRÜSSE", b""), ("grüsse", b"")):
            literal = words.encode()
            want = _ok(theirs, b"SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n" % len(literal) + literal)
            assert _ok(ours, f'SEARCH SUBJECT "{words}"'.encode()) == want == [
                b"* SEARCH" + found + b"\r\n"]
        ours.logout()
        theirs.logout()

    await trio.to_thread.run_sync(compare)


async def test_utf8_accept_refusals(gateway):
    gateway.deliver(message(1))

    def scenario() -> None:
        before, after = gateway.imaplib(), gateway.imaplib()
        _ok(before, b"CREATE Box")
        # RFC 6855 4: UTF8 data before ENABLE is BAD; nothing is stored
        lines, done = _run(before, b"APPEND Box UTF8 (~{4+}\r\nx: y)")
        assert done.split()[1] == b"BAD", done
        # an 8-bit name before ENABLE is no valid modified UTF-7: NO, as Dovecot
        assert _run(before, 'CREATE "Grüße"'.encode())[1].split()[1] == b"NO"
        assert _ok(before, b"STATUS Box (MESSAGES)") == [b"* STATUS Box (MESSAGES 0)\r\n"]
        _ok(before, b"SELECT INBOX")
        assert _ok(before, b"SEARCH CHARSET UTF-8 ALL") == [b"* SEARCH 1\r\n"]
        assert _ok(after, b"ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT\r\n"]
        assert _ok(after, b"ENABLE UTF8=ACCEPT") == [b"* ENABLED\r\n"]   # RFC 5161 3.1
        for command, status in [
                (b"APPEND Box UTF8 ~{4+}\r\nx: y", b"BAD"),          # the literal needs ( )
                (b'CREATE "Bad\xff\xfe"', b"NO"),                    # not UTF-8
                (b'CREATE "Tab\tname"', b"NO"),                      # RFC 6855 3: no controls
                ('CREATE "Line\u2028sep"'.encode(), b"NO"),
                (b"SELECT INBOX", b"OK"),
                (b"SEARCH CHARSET UTF-8 ALL", b"BAD"),               # RFC 6855 3
                (b"SEARCH CHARSET US-ASCII ALL", b"BAD"),
                (b"SORT (DATE) US-ASCII ALL", b"BAD"),               # erratum 4029
                (b"THREAD REFERENCES ISO-8859-1 ALL", b"BAD"),
                (b"SORT (DATE) UTF-8 ALL", b"OK"),
                (b"THREAD ORDEREDSUBJECT utf-8 ALL", b"OK"),
                (b"SEARCH ALL", b"OK")]:
            assert _run(after, command)[1].split()[1] == status, command
        # "&" is a plain character after ENABLE: "A&-B" is that name, not "A&B"
        _ok(after, b'CREATE "A&-B"')
        assert _ok(before, b'LIST "" "A&-*"') == [b'* LIST (\\HasNoChildren) "/" A&--B\r\n']
        for client in (before, after):
            client.logout()

    await trio.to_thread.run_sync(scenario)


_ITEMS = re.compile(rb"(ENVELOPE \(.*\)) BODYSTRUCTURE (\(.*?\)) (?:RFC822\.SIZE|BODY\[)", re.S)


async def test_utf8_headers_in_envelope_are_dovecots_bytes(gateway):
    """RFC 6855 3 / RFC 9051 4.3 let a UTF8=ACCEPT or IMAP4rev2 session get UTF-8 in quoted
    strings, but do not require it: ENVELOPE and BODYSTRUCTURE strings holding 8-bit text go out
    as literals in every session, byte for byte what Dovecot 2.3 sends for the same message
    (literals are valid everywhere; only the order of FETCH items differs)."""
    def compare() -> None:
        rev1, utf8, rev2, theirs = (gateway.imaplib(), gateway.imaplib(), gateway.imaplib(),
                                    _dovecot(gateway))
        _ok(utf8, b"ENABLE UTF8=ACCEPT")
        _ok(rev2, b"ENABLE IMAP4rev2")
        for client in (rev1, theirs):
            _ok(client, b"CREATE Intl")
            _ok(client, b"APPEND Intl {%d+}\r\n" % len(INTL) + INTL)
        for client in (rev1, utf8, rev2, theirs):
            _ok(client, b"EXAMINE Intl")
        [want] = _ok(theirs, FETCH)
        expected = _ITEMS.search(want).groups()
        assert b"{31}\r\n" + "Grüße".encode() in expected[0]
        for client in (rev1, utf8, rev2):
            [got] = _ok(client, FETCH)
            assert _ITEMS.search(got).groups() == expected, (got, want)
        for client in (rev1, utf8, rev2, theirs):
            client.logout()

    await trio.to_thread.run_sync(compare)


async def test_mailbox_names_are_not_normalised_like_dovecot(gateway):
    """RFC 6855 3 wants names in Net-Unicode (RFC 5198 2), whose NFC is a SHOULD for the
    sender: like Dovecot, the gateway keeps names as sent, so "Café" in NFC and in NFD
    (e + U+0301) are two mailboxes (a client following RFC 5198 only ever sends the first),
    whether named in UTF-8 or in modified UTF-7."""
    nfc, nfd = "Caf\u00e9", "Cafe\u0301"

    def compare() -> None:
        utf8, mutf7, theirs = gateway.imaplib(), gateway.imaplib(), _dovecot(gateway)
        _ok(utf8, b"ENABLE UTF8=ACCEPT")
        _ok(utf8, _command('CREATE "{0}"', [nfc], True))
        _ok(mutf7, _command('CREATE "{0}"', [nfd], False))
        for name in (nfc, nfd):
            _ok(theirs, _command('CREATE "{0}"', [name], False))
        want = sorted(_decoded(_ok(theirs, b'LIST "" "Caf*"'), False))
        assert len(want) == 2
        assert sorted(_decoded(_ok(utf8, b'LIST "" "Caf*"'), True)) == want
        assert sorted(_decoded(_ok(mutf7, b'LIST "" "Caf*"'), False)) == want
        for client in (utf8, mutf7, theirs):
            client.logout()

    await trio.to_thread.run_sync(compare)
