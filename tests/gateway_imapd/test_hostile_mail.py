"""Hostile mail at ingest: a message whose charset Python's codec machinery chokes on is
stored and served like Dovecot serves it, never wedges the account's fetcher (mail delivered
after it still arrives), SEARCH TEXT and PREVIEW answer for it, and its APPEND answers OK.

"idna" and "undefined" raise UnicodeError whatever the error handler, so the search text
computed at ingest failed, the batch was never committed, and every later sync failed the same
way: the account received no mail at all from then on (proxy/gateway/charsets.py).
"""

from __future__ import annotations

import imaplib

import pytest
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


async def _ours_and_dovecots(gateway, answers):
    """`answers(client)` from the gateway's session and from Dovecot's on the same mailbox."""
    def run():
        ours = gateway.imaplib()
        mine = answers(ours)
        ours.logout()
        theirs = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port)
        theirs.login(gateway.user, gateway.password)
        reference = answers(theirs)
        theirs.logout()
        return mine, reference

    return await trio.to_thread.run_sync(run)


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


# "=?" openers with no "?=" after them: the standard library's encoded-word regex scanned to
# the line's end from each (proxy/gateway/rfc2047.py), ~100 s of CPU for this 140 KB Subject
UNCLOSED_WORDS = b"=?a?q?x" * 20000
# leading blobs: the base subject (RFC 5256 2.1 steps 3 and 4) rescanned them once per blob,
# 65 s of CPU for this 80 KB Subject (proxy/gateway/basesubject.py)
BLOBS = b"[b] " * 19999 + b"[b]"


@pytest.mark.parametrize("subject", [UNCLOSED_WORDS, BLOBS], ids=["unclosed-words", "blobs"])
async def test_a_costly_subject_neither_wedges_the_account_nor_differs_from_dovecot(gateway,
                                                                                      subject):
    """A Subject of 20,000 unclosed encoded words (RFC 2047 2) or leading blobs (RFC 5256
    2.1): its search text or sort key took a minute or more of CPU at ingest, so the login's
    wait for the sync ran out and the account saw none of its mail (nor later mail) for that
    long. Now both messages are there at login and SEARCH, SORT and ENVELOPE answer as
    Dovecot does."""
    gateway.deliver(b"From: a@example.org\r\nSubject: " + subject + b" needle\r\n\r\nbody\r\n")
    gateway.deliver(message(2, subject="after the unclosed words"))

    def answers(client: imaplib.IMAP4) -> tuple:
        typ, data = client.select("INBOX", readonly=True)
        assert typ == "OK", data
        return (data, client.search(None, "SUBJECT", "needle"), client.search(None, "TEXT", "xx"),
                client.sort("(SUBJECT)", "UTF-8", "ALL"), client.fetch("1:2", "(ENVELOPE)"))

    mine, reference = await _ours_and_dovecots(gateway, answers)
    assert mine[0] == [b"2"]
    assert mine[1] == ("OK", [b"1"])
    assert mine[:4] == reference[:4]
    # ENVELOPE: the same Subject (Dovecot sends so long a string as a literal, we quote it)
    for typ, fetched in (mine[4], reference[4]):
        first = b"".join(fetched[0]) if isinstance(fetched[0], tuple) else fetched[0]
        assert typ == "OK" and subject + b" needle" in first


MIXED_CONTINUATIONS = (b"From: a@example.org\r\nSubject: mixed continuations\r\n"
                       b"Content-Type: text/plain; charset*=a; charset*0*=b\r\n\r\nneedle\r\n")


async def test_a_charset_both_numbered_and_not_neither_wedges_the_account_nor_fails_preview(gateway):
    """`charset*` and `charset*0*` in one Content-Type (RFC 2231 3 continuations, one of them
    unnumbered): the standard library's get_content_charset() raised TypeError, so the search
    text computed at ingest failed the sync, and every later one: the account got no mail at
    all. Now it and later mail arrive, SEARCH TEXT finds it and PREVIEW answers."""
    gateway.deliver(MIXED_CONTINUATIONS)
    gateway.deliver(message(2, subject="after the mixed continuations"))

    def run():
        ours = gateway.imaplib()
        typ, exists = ours.select("INBOX", readonly=True)
        selected = typ, list(exists)   # imaplib adds later EXISTS to this list
        found = ours.search(None, "TEXT", "needle")
        preview = ours.fetch("1", "(PREVIEW)")
        appended = ours.append("INBOX", None, None, MIXED_CONTINUATIONS)[0]
        ours.logout()
        return selected, found, preview, appended

    selected, found, preview, appended = await trio.to_thread.run_sync(run)
    assert selected == ("OK", [b"2"])
    assert found == ("OK", [b"1"])
    assert preview == ("OK", [b'1 (PREVIEW "needle")'])
    assert appended == "OK"


UNCLOSED_IDS = b"<" * 60000


async def test_unclosed_message_ids_neither_wedge_the_account_nor_differ_from_dovecot(gateway):
    """Message-ID, References and In-Reply-To of 60,000 "<" with no ">" (RFC 5322 3.6.4
    msg-id): the message-id pattern scanned the rest of the value again from each "<", about
    half a minute of CPU at ingest (the sort record), so the login's wait for the sync ran out
    and the account saw none of its mail for that long. Now both messages are there at login
    and THREAD and SORT answer as Dovecot does."""
    gateway.deliver(b"From: a@example.org\r\nSubject: ids\r\nMessage-ID: " + UNCLOSED_IDS +
                    b"\r\nReferences: " + UNCLOSED_IDS + b"<m2@example.org>\r\nIn-Reply-To: " +
                    UNCLOSED_IDS + b"\r\n\r\nbody\r\n")
    gateway.deliver(message(2, subject="Re: ids"))

    def answers(client: imaplib.IMAP4) -> tuple:
        typ, data = client.select("INBOX", readonly=True)
        return ((typ, list(data)), client.thread("REFERENCES", "UTF-8", "ALL"),
                client.sort("(SUBJECT)", "UTF-8", "ALL"))

    mine, reference = await _ours_and_dovecots(gateway, answers)
    assert mine[0] == ("OK", [b"2"])
    assert mine == reference
