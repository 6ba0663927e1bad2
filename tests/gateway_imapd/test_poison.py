"""Issue 14, item 1: a poison message (hundreds of nested message/rfc822 or multipart levels)
delivered to the real upstream Dovecot is stored, served exactly as Dovecot serves it, and mail
that arrives after it is still fetched; APPEND of it answers OK."""

from __future__ import annotations

import imaplib

import trio
from gateway_mime.corpus import crlf, nested_multipart, nested_rfc822

from .conftest import message

POISON = [crlf(nested_rfc822(600)), crlf(nested_multipart(340)), crlf(nested_multipart(120, True))]
ITEMS = "(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[1] BODY.PEEK[1.1] BODY.PEEK[1.1.1.MIME] BODY.PEEK[])"


def _fetch_all(client: imaplib.IMAP4, count: int) -> list[bytes]:
    imaplib._MAXLINE = max(imaplib._MAXLINE, 8 << 20)
    typ, data = client.fetch(f"1:{count}", ITEMS)
    assert typ == "OK", data
    out, current = [], b""
    for item in data:
        if item == b")":
            out.append(current + b")")
            current = b""
        else:
            current += item if isinstance(item, bytes) else item[0] + item[1]
    return [_without_flags(x) for x in out]


def _without_flags(reply: bytes) -> bytes:
    start = reply.find(b"FLAGS (")
    return reply if start < 0 else reply[:start] + reply[reply.index(b")", start) + 2:]


async def test_poison_is_stored_served_like_dovecot_and_later_mail_arrives(gateway):
    for raw in POISON:
        gateway.deliver(raw)

    def first_login():
        c = gateway.imaplib()
        typ, data = c.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"3"])
        ours = _fetch_all(c, 3)
        c.logout()
        upstream = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port)
        upstream.login(gateway.user, gateway.password)
        upstream.select("INBOX", readonly=True)
        theirs = _fetch_all(upstream, 3)
        upstream.logout()
        return ours, theirs

    ours, theirs = await trio.to_thread.run_sync(first_login)
    assert len(ours) == 3 and ours == theirs

    gateway.deliver(message(4, subject="after the poison"))

    def second_login():
        c = gateway.imaplib()   # a login syncs and waits for it
        typ, data = c.select("INBOX", readonly=True)
        typ, subject = c.fetch("4", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        c.logout()
        return data, subject[0][1]

    assert await trio.to_thread.run_sync(second_login) == ([b"4"], b"Subject: after the poison\r\n\r\n")


async def test_append_of_poison_answers_ok_and_serves_it(gateway):
    def run():
        c = gateway.imaplib()
        results = [c.append("INBOX", None, None, raw)[0] for raw in POISON]
        c.select("INBOX", readonly=True)
        ours = _fetch_all(c, 3)
        c.logout()
        upstream = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port)
        upstream.login(gateway.user, gateway.password)
        for raw in POISON:
            upstream.append("INBOX", None, None, raw)
        upstream.select("INBOX", readonly=True)
        theirs = _fetch_all(upstream, 3)
        upstream.logout()
        return results, ours, theirs

    results, ours, theirs = await trio.to_thread.run_sync(run)
    assert results == ["OK", "OK", "OK"]
    assert ours == theirs
