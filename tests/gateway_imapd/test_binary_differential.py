"""BINARY (RFC 3516) against Dovecot IMAP: the MIME corpus (the stdlib's test_email messages plus
the generated odd mail of tests/gateway_mime/corpus.py) and messages made for BINARY (NUL in
base64, quoted-printable soft breaks and trailing space, an unknown or undecodable encoding,
decoded parts inside multiparts and an encapsulated message) are delivered to one Dovecot account,
read through Dovecot's IMAP directly and through the gateway (ingested over POP3), and the same
FETCH BINARY / BINARY.SIZE commands are compared per message: the tagged status with its response
code (NO [UNKNOWN-CTE], NO [PARSE]) and, when OK, the FETCH items byte for byte, literal8 (~{n})
markers included. One deliberate difference: where Dovecot drops the connection (base64 that
ends in the middle of a group: "Base64 data ends prematurely" in its log, a server error), the
gateway must answer NO [PARSE], as Dovecot does for other undecodable data. Messages are paired
as in test_differential.py (by the digest of BODY[]); the ones whose last line has no CRLF
cannot cross POP3 unchanged and are left out here.

APPEND with a literal8 holding NUL (4.3) is compared the same way: status, then the stored
message's BINARY[] and BODY[].
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import re

import trio
from gateway_mime import corpus, wire

from proxy.gateway.imapd._caches import ANALYZE_IN_THREAD

from .test_differential import NO_FINAL_CRLF, corpus_pairs, dovecot_inbox, gateway_inbox

_tags = itertools.count(1)
_STATUS = re.compile(rb"^\S+ (OK|NO|BAD)(?: \[([A-Z-]+))?")

BINARY_MESSAGES = {
    "b64-nul": b"From: a@example.com\r\nSubject: b64\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               b"SGVsbG8AV29ybGQ=\r\n",
    "qp-soft-breaks": b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Content-Transfer-Encoding: Quoted-Printable\r\nX-After: 1\r\n\r\n"
                      b"Hall=C3=B6 wo=\r\nrld=3D   \r\nline2=20\r\nsoft =  \r\nend\r\n",
    "unknown-cte": b"From: a@example.com\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nabc\r\n",
    "bad-base64": b"From: a@example.com\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVs!!bG8=\r\n",
    "mixed-multipart": (
        b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"preamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nplain part\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment\r\n\r\nAAECAwQF\r\n"
        b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ninner =E9t=E9\r\n"
        b"--XX--\r\nepilogue\r\n"),
    "multipart-unknown-inner": (
        b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=YY\r\n\r\n"
        b"--YY\r\nContent-Type: text/plain\r\n\r\nfine\r\n"
        b"--YY\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-foo\r\n\r\nodd\r\n--YY--\r\n"),
}

ITEMS = [
    b"BINARY.PEEK[] BINARY.SIZE[]",
    b"BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1]<3.40>",
    b"BINARY.PEEK[2] BINARY.SIZE[2]",
    b"BINARY.PEEK[3] BINARY.PEEK[3.1] BINARY.SIZE[2.1]",
    b"BINARY.PEEK[1.1] BINARY.PEEK[2.2]",
    # RFC 3516 6 has part numbers only; Dovecot answers any BODY section (TEXT decoded)
    b"BINARY.SIZE[TEXT] BINARY.PEEK[TEXT] BINARY.PEEK[TEXT]<2.30>",
    b"BINARY.SIZE[HEADER] BINARY.PEEK[HEADER] BINARY.PEEK[1.MIME] BINARY.SIZE[2.MIME]",
    b"BINARY.PEEK[3.TEXT] BINARY.SIZE[3.TEXT] BINARY.SIZE[2.HEADER] BINARY.PEEK[1.TEXT]",
    b"BINARY.PEEK[HEADER.FIELDS (FROM SUBJECT)] BINARY.SIZE[HEADER.FIELDS.NOT (FROM)]",
]


def _run(client: imaplib.IMAP4, command: bytes) -> tuple[tuple, list[bytes]]:
    tag = b"b%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    return _STATUS.match(replies[-1]).groups(), replies[:-1]


def _items(replies: list[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for reply in replies:
        if b" FETCH " in reply[:20]:
            out.update(wire.fetch_items(reply)[1])
    out.pop(b"UID", None)   # Dovecot names the message it failed on
    return out


async def test_binary_fetch_answers_like_dovecot(gateway):
    messages = corpus.corpus() + list(BINARY_MESSAGES.items())
    for _, raw in messages:
        gateway.deliver(raw)

    def compare() -> tuple[list[str], int]:
        theirs, ours = dovecot_inbox(gateway), gateway_inbox(gateway, "BINARY", len(messages))
        bad, compared = [], 0
        for seq, other, name in corpus_pairs(ours, theirs, [name for name, _ in messages]):
            for items in ITEMS:
                try:
                    want = _run(theirs, b"FETCH %d (%s)" % (other, items))
                except EOFError:   # see the module docstring
                    want = ((b"NO", b"PARSE"), [])
                    theirs = dovecot_inbox(gateway)
                got = _run(ours, b"FETCH %d (%s)" % (seq, items))
                compared += 1
                if want[0] != got[0] or (want[0][0] == b"OK" and _items(want[1]) != _items(got[1])):
                    bad.append(f"{name} {items.decode()}\n  dovecot {want[0]} "
                               f"{_items(want[1])!r:.400}\n  gateway {got[0]} {_items(got[1])!r:.400}")
        ours.logout()
        theirs.logout()
        return bad, compared

    bad, compared = await trio.to_thread.run_sync(compare)
    assert compared == len(ITEMS) * (len(messages) - len(NO_FINAL_CRLF))
    assert not bad, f"{len(bad)} differences:\n" + "\n".join(bad[:20])


async def test_append_literal8_like_dovecot(gateway):
    body = b"From: a@example.com\r\nSubject: nul\r\n\r\nbinary\0data\r\n\x01\x02\xff\r\n"
    other = gateway.dovecot.add_user()

    def compare() -> list:
        ours = gateway.imaplib()
        theirs = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port, timeout=30)
        theirs.login(*other)
        out = []
        for client in (theirs, ours):
            _run(client, b"CREATE Bin")
            status, _ = _run(client, b"APPEND Bin ~{%d+}\r\n" % len(body) + body)
            _run(client, b"EXAMINE Bin")
            fetched = _items(_run(client, b"FETCH 1 (BINARY.PEEK[] BODY.PEEK[] BINARY.SIZE[])")[1])
            out.append((status, fetched))
            client.logout()
        return out

    want, got = await trio.to_thread.run_sync(compare)
    assert want[0] == (b"OK", b"APPENDUID")
    assert wire.string_value(want[1][b"BINARY[]"]) == body
    assert got == want


async def test_big_binary_is_decoded_in_a_worker_thread(gateway, monkeypatch):
    """A chunk of bodies past ANALYZE_IN_THREAD is decoded off the event loop (DESIGN.md), and
    the decoded bytes are the payload exactly (literal8, as it holds NUL)."""
    payload = bytes(range(256)) * 1600   # 400 KiB
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    body = (b"Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded)
    assert len(body) > ANALYZE_IN_THREAD
    in_thread = []
    real = trio.to_thread.run_sync

    async def spy(fn, *args, **kwargs):
        in_thread.append(getattr(fn, "__qualname__", ""))
        return await real(fn, *args, **kwargs)

    def run() -> tuple:
        client = gateway.imaplib()
        _run(client, b"CREATE Big")
        _run(client, b"APPEND Big {%d+}\r\n" % len(body) + body)
        _run(client, b"EXAMINE Big")
        items = _items(_run(client, b"FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")[1])
        client.logout()
        return items

    monkeypatch.setattr(trio.to_thread, "run_sync", spy)
    items = await real(run)
    assert items[b"BINARY.SIZE[1]"] == b"%d" % len(payload)
    assert items[b"BINARY[1]"].startswith(b"~{%d}\r\n" % len(payload))
    assert wire.string_value(items[b"BINARY[1]"]) == payload
    assert any("decode_chunk" in name for name in in_thread), in_thread


async def test_a_long_run_of_blanks_in_quoted_printable_is_decoded_in_linear_time(gateway):
    """RFC 2045 6.7 (3): blanks at a line's end are no data, so decoding drops them; others are
    kept. The pattern that found the trailing ones tried a run of blanks not at a line end from
    each of its blanks and backtracked over the rest: 60 KB of them took minutes of CPU in a
    worker thread (holding the GIL against every session), and the client timed out. (Dovecot
    answers NO [PARSE] for a quoted-printable line this long; the gateway decodes it.)"""
    run_ = b"\t " * 30000
    body = (b"Subject: blanks\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + run_ + b"x=20\r\n" + run_ + b"\r\nend\r\n")

    def run() -> dict:
        client = gateway.imaplib()
        _run(client, b"APPEND INBOX {%d+}\r\n" % len(body) + body)
        _run(client, b"EXAMINE INBOX")
        items = _items(_run(client, b"FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")[1])
        client.logout()
        return items

    items = await trio.to_thread.run_sync(run)
    decoded = run_ + b"x \r\n\r\nend\r\n"
    assert items[b"BINARY.SIZE[1]"] == b"%d" % len(decoded)
    assert wire.string_value(items[b"BINARY[1]"]) == decoded
