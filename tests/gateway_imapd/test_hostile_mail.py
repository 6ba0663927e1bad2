"""Hostile mail at ingest: a message whose charset Python's codec machinery chokes on is
stored and served like Dovecot serves it, never wedges the account's fetcher (mail delivered
after it still arrives), SEARCH TEXT and PREVIEW answer for it, and its APPEND answers OK.

"idna" and "undefined" raise UnicodeError whatever the error handler, so the search text
computed at ingest failed, the batch was never committed, and every later sync failed the same
way: the account received no mail at all from then on (proxy/gateway/charsets.py).
"""

from __future__ import annotations

import imaplib

import trio

from .conftest import message

CHOKING = [b"idna", b"undefined", b"punycode", b'"ut\\"f8"', b"zlib"]


def hostile(charset: bytes) -> bytes:
    word = charset.strip(b'"')
    return (b"From: =?" + word + b"?b?/w==?= <a@example.org>\r\nTo: b@example.org\r\n"
            b"Subject: =?" + word + b"?q?=FF=FE?= about " + word + b"\r\n"
            b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\n"
            b"xn--\xff\xfe +AGE- needle\r\n")


ITEMS = "(ENVELOPE BODYSTRUCTURE BODY.PEEK[] BODY.PEEK[TEXT])"


def _answers(client: imaplib.IMAP4, count: int) -> tuple:
    client.select("INBOX", readonly=True)
    typ, fetched = client.fetch(f"1:{count}", ITEMS)
    assert typ == "OK", fetched
    typ, found = client.search(None, "TEXT", "needle")
    assert typ == "OK", found
    return fetched, found


async def test_a_charset_python_chokes_on_is_stored_served_and_later_mail_arrives(gateway):
    for charset in CHOKING:
        gateway.deliver(hostile(charset))
    gateway.deliver(message(99, subject="after the hostile ones", body="needle too"))
    count = len(CHOKING) + 1

    def run():
        ours = gateway.imaplib()
        typ, data = ours.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [str(count).encode()])
        mine = _answers(ours, count)
        typ, preview = ours.fetch(f"1:{count}", "(PREVIEW)")
        appended = [ours.append("INBOX", None, None, hostile(c))[0] for c in CHOKING]
        ours.logout()
        theirs = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port)
        theirs.login(gateway.user, gateway.password)
        reference = _answers(theirs, count)
        theirs.logout()
        return mine, reference, typ, preview, appended

    mine, reference, typ, preview, appended = await trio.to_thread.run_sync(run)
    assert appended == ["OK"] * len(CHOKING)
    assert mine == reference
    assert mine[1] == [b" ".join(b"%d" % n for n in range(1, count + 1))]
    assert typ == "OK"
    texts = [item[1] for item in preview if isinstance(item, tuple)]
    # read as UTF-8, as an unknown charset is
    assert texts == ["xn--\ufffd\ufffd +AGE- needle".encode()] * len(CHOKING)
    assert preview[-1] == b'%d (PREVIEW "needle too")' % count
