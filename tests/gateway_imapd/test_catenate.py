"""CATENATE (RFC 4469) against Dovecot IMAP: the same APPEND ... CATENATE commands (text literals
and literal8s, URLs of whole messages, sections, partials, percent-encoded names, a MULTIAPPEND of
catenated messages; bad UIDVALIDITY, missing message or mailbox, absolute and malformed URLs, bad
grammar) sent to both, compared as status with response code, then as what the target mailbox
holds (flags and BODY[] of every message). A failed command must have stored nothing (STATUS
after each). UIDVALIDITY differs between the servers, so `{uv}` in a command stands for each
server's own. On the gateway alone: a URL to a message of another mailbox by a second session,
an unparsable URL, a TEXT literal8 holding NUL (stored; Dovecot refuses any literal8 in
CATENATE with NO [UNKNOWN-CTE], RFC 3516 4.4 lets a server that can store binary take it), and
the bound on the built message (`max_literal`, NO [TOOBIG]).
"""

from __future__ import annotations

import dataclasses
import imaplib
import itertools
import re
import urllib.parse

import trio
from gateway_mime import wire

from .conftest import GatewayHandle, differences_from_dovecot

_tags = itertools.count(1)
_STATUS = re.compile(rb"^\S+ (OK|NO|BAD)(?: \[([A-Z-]+))?")

SOURCE = (b"From: a@example.com\r\nSubject: source\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=S\r\n\r\n--S\r\nContent-Type: text/plain\r\n\r\n"
          b"first part text\r\n--S\r\nContent-Type: text/plain\r\n\r\nsecond part\r\n--S--\r\n")
HEADER = b"From: cat@example.com\r\nSubject: catenated\r\n\r\n"


def _lit(data: bytes, binary: bool = False) -> bytes:
    return (b"~" if binary else b"") + b"{%d+}\r\n" % len(data) + data


COMMANDS = [
    b"APPEND Dst CATENATE (TEXT " + _lit(HEADER) + b' URL "/Src;UIDVALIDITY={uv}/;UID=1/;SECTION=TEXT")',
    b'APPEND Dst (\\Flagged) CATENATE (URL "/Src/;UID=2")',
    b"APPEND Dst CATENATE (TEXT " + _lit(HEADER) + b' URL "/Src/;UID=1/;SECTION=1" URL '
    b'"/Src/;UID=1/;SECTION=2/;PARTIAL=3.4" URL "/Src/;uid=1/;partial=0.21")',
    b'APPEND Dst CATENATE (URL "/Src/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)" TEXT '
    + _lit(b"body\r\n") + b")",
    b'APPEND Dst CATENATE (URL "/My%20Box/;UID=1/;SECTION=HEADER" TEXT ' + _lit(b"a b\r\n") + b")",
    b'APPEND Dst CATENATE (URL "/Src;UIDVALIDITY=1/;UID=1")',                # BADURL: UIDVALIDITY
    b'APPEND Dst CATENATE (URL "/Src/;UID=99")',                             # BADURL: no message
    b'APPEND Dst CATENATE (URL "/Nowhere/;UID=1")',                          # BADURL: no mailbox
    b'APPEND Dst CATENATE (URL "imap://user@example.com/Src/;UID=1")',       # BADURL: absolute
    b'APPEND Dst CATENATE (URL "/Src/;UID=1;SECTION=1")',                    # BADURL: malformed
    b'APPEND Dst CATENATE (URL "/Src/;UID=1") CATENATE (URL "/Src/;UID=98")',   # atomic: none
    b'APPEND Dst (\\Seen) CATENATE (URL "/Src/;UID=2") ' + _lit(HEADER + b"plain\r\n"),
    b'APPEND Dst CATENATE (TEXT "quoted")',                                  # BAD: not a literal
    b"APPEND Dst CATENATE ()",                                               # BAD: empty
    b'APPEND Nowhere CATENATE (URL "/Src/;UID=1")',                          # NO [TRYCREATE]
]


def _run(client: imaplib.IMAP4, command: bytes) -> tuple[tuple, list[bytes]]:
    tag = b"c%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    return _STATUS.match(replies[-1]).groups(), replies[:-1]


def _holds(client: imaplib.IMAP4) -> list:
    _run(client, b"EXAMINE Dst")
    out = []
    for line in _run(client, b"FETCH 1:* (FLAGS BODY.PEEK[])")[1]:
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).split()) - {b"\\Recent"}
        out.append((sorted(flags), wire.fetch_items(line)[1][b"BODY[]"]))
    _run(client, b"CLOSE")
    return out


def _prepare(client: imaplib.IMAP4) -> bytes:
    for box in (b"Src", b"Dst", b'"My Box"'):
        assert _run(client, b"CREATE " + box)[0][0] == b"OK"
    for box, body in ((b"Src", SOURCE), (b"Src", HEADER + b"second message\r\n"),
                      (b'"My Box"', HEADER + b"in my box\r\n")):
        assert _run(client, b"APPEND " + box + b" " + _lit(body))[0][0] == b"OK"
    status = _run(client, b"STATUS Src (UIDVALIDITY)")[1][0]
    return re.search(rb"UIDVALIDITY (\d+)", status).group(1)


async def test_catenate_answers_like_dovecot(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    other = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        assert "CATENATE" in ours.capabilities
        uv_ours, uv_theirs = _prepare(ours), _prepare(theirs)
        bad = []
        for command in COMMANDS:
            want = _run(theirs, command.replace(b"{uv}", uv_theirs))[0]
            got = _run(ours, command.replace(b"{uv}", uv_ours))[0]
            if want != got:
                bad.append(f"{command[:70]!r}\n  dovecot {want}\n  gateway {got}")
            # (Dovecot reads the rest of a line it refused as a command: "* BAD ... Invalid tag")
            counts = [[r for r in _run(c, b"STATUS Dst (MESSAGES)")[1] if r.startswith(b"* STATUS")]
                      for c in (theirs, ours)]
            if counts[0] != counts[1]:   # RFC 4469 5 / 3502 3: a failed APPEND stored nothing
                bad.append(f"after {command[:70]!r}: dovecot {counts[0]} gateway {counts[1]}")
        want, got = _holds(theirs), _holds(ours)
        if want != got:
            bad.append(f"Dst holds\n  dovecot {want}\n  gateway {got}")
        return bad + ([] if len(want) == 7 else [f"Dovecot holds {len(want)}, not 7"])

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, "\n".join(bad)


async def test_catenate_gateway_only(dovecot, tmp_path, nursery, gateway_store):
    """A message appended by one session is a URL for another; a TEXT literal8 may hold NUL;
    garbage is BADURL; the built message is bounded by max_literal (NO [TOOBIG], nothing
    stored)."""
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    limits = dataclasses.replace(gateway.listener.limits, max_literal=32 * 1024)
    gateway.listener = dataclasses.replace(gateway.listener, limits=limits)
    await gateway.start(nursery)
    big = b"Subject: big\r\n\r\n" + b"x" * 20_000 + b"\r\n"

    def run() -> list:
        first, second = gateway.imaplib(), gateway.imaplib()
        _run(first, b"CREATE Src")
        _run(first, b"APPEND Src " + _lit(big))
        results = [
            _run(second, b'APPEND Src CATENATE (URL "/Src/;UID=1/;SECTION=HEADER" TEXT '
                 + _lit(b"short\0\r\n", binary=True) + b")")[0],
            _run(second, b'APPEND Src CATENATE (URL "garbage")')[0],
            _run(second, b'APPEND Src CATENATE (URL "/Src/;UID=0")')[0],
            _run(second, b'APPEND Src CATENATE (URL "/Src/;UID=1/;SECTION=1.0")')[0],
            _run(second, b'APPEND Src CATENATE (URL "/Src/;UID=1" URL "/Src/;UID=1")')[0],
            _run(second, b"STATUS Src (MESSAGES)")[1][0],
        ]
        _run(second, b"EXAMINE Src")
        body = wire.fetch_items(_run(second, b"FETCH 2 (BINARY.PEEK[])")[1][0])[1][b"BINARY[]"]
        results.append(wire.string_value(body))
        first.logout()
        second.logout()
        return results

    results = await trio.to_thread.run_sync(run)
    await gateway.stop()
    assert results == [(b"OK", b"APPENDUID"), (b"NO", b"BADURL"), (b"NO", b"BADURL"),
                       (b"NO", b"BADURL"), (b"NO", b"TOOBIG"), b"* STATUS Src (MESSAGES 2)\r\n",
                       b"Subject: big\r\n\r\nshort\0\r\n"]


async def test_catenate_absolute_urls_of_this_server_and_user(dovecot, tmp_path, nursery):
    """RFC 4469 5 / RFC 5092 3: an absolute `imap://` URL naming a host of `gateway.url_hosts`
    (any case, any port) and the logged-in user (compared as logins are: `user_case`, with
    or without ;AUTH=) is as good as its relative path; another user, no user (anonymous), an
    unlisted host or URLAUTH is NO [BADURL], and nothing is stored."""
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, url_hosts=["imap.example.org"])
    await gateway.start(nursery)
    me = urllib.parse.quote(user, safe="").encode()
    source = b"Subject: src\r\n\r\nbody\r\n"
    good = [b"imap://%s@imap.example.org/Src/;UID=1" % me,
            b"imap://%s;AUTH=*@IMAP.Example.ORG:993/Src/;UID=1" % me.upper(),
            b"imap://%s@imap.example.org/Src;UIDVALIDITY={uv}/;UID=1/;SECTION=HEADER" % me]
    bad = [b"imap://someone.else@imap.example.org/Src/;UID=1",
           b"imap://imap.example.org/Src/;UID=1",
           b"imap://%s@elsewhere.example.org/Src/;UID=1" % me,
           b"imap://%s@imap.example.org/Src/;UID=1;URLAUTH=anonymous:internal:%s" % (me, b"0" * 32),
           b"imap://%s@imap.example.org" % me]

    def run() -> list:
        client = gateway.imaplib()
        _run(client, b"CREATE Src")
        _run(client, b"APPEND Src " + _lit(source))
        uv = re.search(rb"UIDVALIDITY (\d+)", _run(client, b"STATUS Src (UIDVALIDITY)")[1][0])[1]
        results = [_run(client, b'APPEND Src CATENATE (URL "%s")' % url.replace(b"{uv}", uv))[0]
                   for url in good + bad]
        results.append(_run(client, b"STATUS Src (MESSAGES)")[1][0])
        _run(client, b"EXAMINE Src")
        results += [wire.string_value(wire.fetch_items(line)[1][b"BODY[]"])
                    for line in _run(client, b"FETCH 2:4 (BODY.PEEK[])")[1]]
        client.logout()
        return results

    results = await trio.to_thread.run_sync(run)
    await gateway.stop()
    assert results == [(b"OK", b"APPENDUID")] * 3 + [(b"NO", b"BADURL")] * 5 + [
        b"* STATUS Src (MESSAGES 4)\r\n", source, source, b"Subject: src\r\n\r\n"]
