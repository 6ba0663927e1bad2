"""PREVIEW (RFC 8970) against Dovecot IMAP: the MIME corpus (the stdlib's test_email messages plus
the generated odd mail of tests/gateway_mime/corpus.py) and messages made for previews (quoted
replies, HTML with head/style/blockquote/entities, a first part that is not text, base64 and
quoted-printable text in other charsets, long text cut at the limit) are delivered to one Dovecot
account, read through Dovecot's IMAP directly and through the gateway (ingested over POP3), and
FETCH (PREVIEW) and FETCH (PREVIEW (LAZY)) are compared byte for byte per message (paired as in
test_differential.py). Dovecot 2.3 advertises PREVIEW and computes it always, as the gateway does.
"""

from __future__ import annotations

import imaplib
import itertools
import re

import trio
from gateway_mime import corpus, wire

from .test_differential import NO_FINAL_CRLF, corpus_pairs, dovecot_inbox, gateway_inbox

_tags = itertools.count(1)

_LONG = " ".join(f"word{n}" for n in range(80))
PREVIEW_MESSAGES = {
    "quoted-reply": b"Subject: re\r\n\r\n> quoted first\r\n>> deeper\r\nmy answer\r\n  here\r\n",
    "only-quoted": b"Subject: q\r\n\r\n>quote1\r\n> quote2\r\n",
    "long-text": b"Subject: long\r\n\r\n" + _LONG.encode() + b"\r\n",
    "html": (b"Subject: h\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
             b"<html><head><title>T</title><style>p {color: red}</style></head><body>"
             b"<p>Hi &amp; welcome,</p><div><br></div><p>How&nbsp;is it?</p>"
             b"<!-- a comment --></body></html>\r\n"),
    "attachment-first": (
        b"Subject: a\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"U2hvdWxkIG5vdCBiZSBpbiBwcmV2aWV3\r\n--A\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe aus K=F6ln\r\n--A--\r\n"),
    "base64-utf8": (b"Subject: b\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n77u/SGVsbG8sIHfDtnJsZCEKICAgIGJ5ZQ==\r\n"),
    "empty-text-then-text": (
        b"Subject: e\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=E\r\n\r\n"
        b"--E\r\nContent-Type: text/plain\r\n\r\n   \r\n--E\r\nContent-Type: text/plain\r\n\r\n"
        b"second part\r\n--E--\r\n"),
}


def _previews(client: imaplib.IMAP4, modifier: bytes) -> dict[int, bytes]:
    tag = b"p%d" % next(_tags)
    client.send(tag + b" FETCH 1:* (PREVIEW" + modifier + b")\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    assert re.match(rb"\S+ OK", replies[-1]), replies[-1]
    out = {}
    for reply in replies[:-1]:
        if b" FETCH " in reply[:20]:
            seq, items = wire.fetch_items(reply)
            out[seq] = items[b"PREVIEW"]
    return out


async def test_preview_answers_like_dovecot(gateway):
    messages = corpus.corpus() + list(PREVIEW_MESSAGES.items())
    for _, raw in messages:
        gateway.deliver(raw)

    def compare() -> tuple[list[str], int]:
        theirs, ours = dovecot_inbox(gateway), gateway_inbox(gateway, "PREVIEW", len(messages))
        pairs = corpus_pairs(ours, theirs, [name for name, _ in messages])
        bad, compared = [], 0
        for modifier in (b"", b" (LAZY)"):
            want, got = _previews(theirs, modifier), _previews(ours, modifier)
            for seq, other, name in pairs:
                compared += 1
                if want[other] != got[seq]:
                    bad.append(f"{name}{modifier.decode()}\n  dovecot {want[other]!r}\n"
                               f"  gateway {got[seq]!r}")
        ours.logout()
        theirs.logout()
        return bad, compared

    bad, compared = await trio.to_thread.run_sync(compare)
    assert compared == 2 * (len(messages) - len(NO_FINAL_CRLF))
    assert not bad, f"{len(bad)} differences:\n" + "\n".join(bad[:25])
