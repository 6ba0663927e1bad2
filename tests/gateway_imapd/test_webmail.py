"""A webmail-style session (what Roundcube sends, issue 17), scripted over a raw socket against
the gateway: capabilities, LIST-EXTENDED with LIST-STATUS for the folder pane, ESEARCH for the
unseen count, ESORT with PARTIAL for one page of a date-sorted list, THREAD=REFERENCES for the
thread view, FETCH of one page of headers, flags, MOVE to Trash with the answers a client
uses to update its view, and imapclient's own SORT/THREAD on the same mailbox."""

from __future__ import annotations

import re

import trio

from .conftest import message
from .test_condstore import Raw


def _mail(n: int, subject: str, refs: str = "") -> bytes:
    raw = message(n, subject=subject)
    if refs:
        raw = raw.replace(b"\r\n\r\n", b"\r\nReferences: " + refs.encode() + b"\r\n\r\n", 1)
    return raw


def _untag(lines: list[bytes]) -> list[bytes]:
    return [re.sub(rb'^\* ESEARCH \(TAG "t\d+"\)', b"* ESEARCH (TAG)", line) for line in lines]


async def test_roundcube_like_session(gateway):
    gateway.deliver(_mail(1, "Lunch?"))
    gateway.deliver(_mail(2, "Re: Lunch?", "<m1@example.org>"))
    gateway.deliver(_mail(3, "Report"))
    gateway.deliver(_mail(4, "Re: Lunch?", "<m1@example.org> <m2@example.org>"))
    gateway.deliver(_mail(5, "Invoice"))

    def scenario():
        rc = Raw(gateway.port, gateway.user, gateway.password)
        caps = rc.cmd("CAPABILITY")[0][0].split()
        for cap in (b"LIST-EXTENDED", b"LIST-STATUS", b"ESEARCH", b"ESORT", b"SORT",
                    b"THREAD=REFERENCES", b"MOVE", b"SPECIAL-USE", b"STATUS=SIZE"):
            assert cap in caps, cap
        # the folder pane: every folder with its counts in one command (RFC 5819)
        lines, done = rc.cmd('LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))')
        assert b"OK" in done
        assert b'* LIST (\\Subscribed) "/" INBOX' in lines
        assert b"* STATUS INBOX (MESSAGES 5 UNSEEN 5)" in lines
        assert b'* LIST (\\Subscribed \\Trash) "/" Trash' in lines
        assert b"* STATUS Trash (MESSAGES 0 UNSEEN 0)" in lines
        rc.cmd("SELECT INBOX")
        # unseen count and the page: newest first, page 1 of size 3 (RFC 5267 PARTIAL)
        lines, _ = rc.cmd("SEARCH RETURN (COUNT) UNSEEN")
        assert _untag(lines) == [b"* ESEARCH (TAG) COUNT 5"]
        lines, _ = rc.cmd("UID SORT RETURN (COUNT PARTIAL 1:3) (REVERSE DATE) UTF-8 ALL")
        assert _untag(lines) == [b"* ESEARCH (TAG) UID PARTIAL (1:3 5,4,3) COUNT 5"]
        # the thread view (RFC 5256)
        lines, _ = rc.cmd("UID THREAD REFERENCES UTF-8 ALL")
        assert lines == [b"* THREAD (1 2 4)(3)(5)"]
        # headers of the page
        lines, _ = rc.cmd("UID FETCH 5,4,3 (UID RFC822.SIZE FLAGS INTERNALDATE "
                          "BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT CONTENT-TYPE)])")
        assert sum(1 for line in lines if re.match(rb"\* \d FETCH \(UID [345] ", line)) == 3
        # reading a message marks it seen; a flag; then delete = MOVE to Trash (RFC 6851)
        rc.cmd("UID FETCH 4 (BODY[])")
        lines, _ = rc.cmd("UID STORE 3 +FLAGS (\\Flagged)")
        assert lines == [b"* 3 FETCH (UID 3 FLAGS (\\Flagged \\Recent))"]
        lines, done = rc.cmd("UID MOVE 4 Trash")
        assert lines[0].startswith(b"* OK [COPYUID ") and lines[1] == b"* 4 EXPUNGE", lines
        assert done.split()[1] == b"OK"
        lines, _ = rc.cmd('LIST "" ("INBOX" "Trash") RETURN (STATUS (MESSAGES UNSEEN))')
        assert b"* STATUS INBOX (MESSAGES 4 UNSEEN 4)" in lines   # the read one moved
        assert b"* STATUS Trash (MESSAGES 1 UNSEEN 0)" in lines
        lines, _ = rc.cmd("UID SORT RETURN (ALL COUNT) (REVERSE DATE) UTF-8 ALL")
        assert _untag(lines) == [b"* ESEARCH (TAG) UID ALL 5,3,2,1 COUNT 4"]
        rc.close()
        # a library client on the same mailbox
        client = gateway.imapclient()
        client.select_folder("INBOX", readonly=True)
        assert client.sort(["REVERSE", "ARRIVAL"]) == [5, 3, 2, 1]
        assert client.thread("REFERENCES") == ((1, 2), (3,), (5,))
        client.logout()

    await trio.to_thread.run_sync(scenario)
