"""Hostile mail at ingest: a message whose header is tens of megabytes (one 50 MB header line)
is stored whole and served byte for byte, answers ENVELOPE/BODYSTRUCTURE/SEARCH as Dovecot
does, and does not hold the event loop that every other session shares.

Header analysis stops at `gateway.limits.mime_max_header_bytes` (10 MiB, Dovecot's
MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE): the field crossing it is cut, later fields have empty
values. Before that bound, one such message cost seconds of event-loop stall for every session
(its arrival date was parsed on the trio thread with the whole header) and a 105 MB cache blob.

Dovecot 2.3.19 itself crashes (istream-header-filter.c assertion) on HEADER.FIELDS naming the
huge line itself, or SEARCH HEADER over it, so those are not compared; HEADER.FIELDS and .NOT of
headers whose *values* cross the bound (Dovecot counts value bytes, not header bytes) are.
"""

from __future__ import annotations

import hashlib
import imaplib
import threading

import trio

from proxy.gateway import analysis, ingest_batches, sortkeys

from .conftest import differences_from_dovecot

M = 1 << 20
TAIL = b"Subject: after\r\nFrom: a@example.org\r\nTo: b@example.org\r\nContent-Type: text/html\r\n\r\n"
HUGE = [
    # one header line crossing the bound from the first byte; the fields after it are emptied
    b"X-Big: " + b"a" * (12 * M) + b"\r\n" + TAIL + b"<p>body text</p>\r\n",
    # Subject and From before the bound are kept, To after it is emptied
    b"Subject: before\r\nFrom: a@example.org\r\nX-Big: " + b"a" * (11 * M) + b"\r\nTo: b@example.org\r\n"
    b"\r\nbody text\r\n",
    # the bound falls between two of 11,000 ordinary lines
    b"Subject: lines\r\n" + b"".join(b"X-L%d: %s\r\n" % (n, b"c" * 1000) for n in range(11000))
    + TAIL + b"body text\r\n",
]
# the values of FILL's lines sum to 755 bytes under Dovecot's bound (10 MiB of values)
FILL = b"Subject: lines\r\n" + b"".join(b"X-L%d: %s\r\n" % (n, b"c" * 1000) for n in range(10485))
# (message, its sections): each field named once per message, because Dovecot answers a field it
# has cached from an earlier FETCH otherwise (an emptied continuation line then vanishes instead
# of ending the answer)
CROSSING = [
    # the bound falls inside a continuation line; the next one is emptied and ends the answer
    (FILL + b"X-K: v\r\n " + b"d" * 2000 + b"\r\n more\r\nX-E: x\r\nX-A:  y\r\n\r\nbody\r\n",
     ["HEADER.FIELDS (X-K X-E X-A)", "HEADER.FIELDS (X-L10485 X-L10484 X-L0)"]),
    # inside a value with no blank after the colon; names past it keep their own spelling
    (FILL + b"X-K:" + b"e" * 2000 + b"\r\nsubject:x\r\nTo :  t\r\nCC:\r\nX-Z: 1\r\n z\r\nX-E: x\r\n\r\n"
     b"body\r\n", ["HEADER.FIELDS (X-Z X-E)", "HEADER.FIELDS (X-K Subject To CC)"]),
    # inside a line without a colon (all value); X-D's emptied continuation ends the answer
    (FILL + b"NoColon" + b"e" * 2000 + b"\r\nX-E: x\r\nX-D: x\r\n y\r\nX-G:\r\n\r\nbody\r\n",
     ["HEADER.FIELDS (X-E X-A X-G Subject X-D)"]),
]
NOT = "HEADER.FIELDS.NOT (X-K X-L5)"   # served whole
ITEMS = "(RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[TEXT] BINARY.SIZE[1])"
SEARCHES = [("SUBJECT", "after"), ("SUBJECT", "before"), ("SUBJECT", "lines"), ("TO", "b@example.org"),
            ("FROM", "a@example.org"), ("TEXT", "body")]


def selected(client: imaplib.IMAP4, count: int) -> bytes:
    """SELECT INBOX until it has `count` messages (a login waits for its sync at most
    gateway.login_sync_wait, and these bodies are big); returns the last count seen."""
    imaplib._MAXLINE = max(imaplib._MAXLINE, 64 * M)
    seen = b"0"
    for _ in range(600):   # bounded polling, not a sleep
        seen = client.select("INBOX", readonly=True)[1][0]
        if seen == b"%d" % count:
            break
        client.noop()
    return seen


def _answers(client: imaplib.IMAP4) -> list:
    assert selected(client, len(HUGE)) == b"%d" % len(HUGE)
    out: list = []
    for n in range(1, len(HUGE) + 1):
        typ, fetched = client.fetch(str(n), ITEMS)
        assert typ == "OK", fetched
        out.append(fetched)
        for section in ("BODY.PEEK[]", "BODY.PEEK[HEADER]"):
            typ, fetched = client.fetch(str(n), f"({section})")
            assert typ == "OK"
            out.append((section, hashlib.sha256(fetched[0][1]).hexdigest()))
    for key, value in SEARCHES:
        out.append((key, value, client.search(None, key, value)))
    return out


async def test_huge_headers_are_served_byte_exact_and_answer_like_dovecot(gateway, dovecot):
    other = dovecot.add_user()
    for raw in HUGE:
        gateway.deliver(raw)
        gateway.deliver(raw, user=other[0])

    def compare(ours: imaplib.IMAP4, theirs: imaplib.IMAP4) -> list[str]:
        mine, reference = _answers(ours), _answers(theirs)
        digests = [x[1] for x in mine if isinstance(x, tuple) and x[0] == "BODY.PEEK[]"]
        assert digests == [hashlib.sha256(raw).hexdigest() for raw in HUGE]   # stored whole
        return [f"{a!r:.300} != {b!r:.300}" for a, b in zip(mine, reference, strict=True) if a != b]

    assert await differences_from_dovecot(gateway, dovecot, other, compare) == []


async def test_header_fields_whose_values_cross_the_bound_answer_like_dovecot(gateway, dovecot):
    other = dovecot.add_user()
    for raw, _ in CROSSING:
        gateway.deliver(raw)
        gateway.deliver(raw, user=other[0])

    def answers(client: imaplib.IMAP4) -> list:
        assert selected(client, len(CROSSING)) == b"%d" % len(CROSSING)
        out: list = []
        for n, (_, sections) in enumerate(CROSSING, 1):
            for section in [*sections, NOT]:
                typ, fetched = client.fetch(str(n), f"(BODY.PEEK[{section}])")
                assert typ == "OK", fetched
                data = fetched[0][1]
                out.append((n, section, data if len(data) < 4096 else hashlib.sha256(data).hexdigest()))
        return out

    def compare(ours: imaplib.IMAP4, theirs: imaplib.IMAP4) -> list[str]:
        mine, reference = answers(ours), answers(theirs)
        cut = b"X-K: v\r\n " + b"d" * 753 + b"\r\n\r\n"
        assert (1, CROSSING[0][1][0], cut) in mine   # the cut is exercised
        return [f"{a!r:.300} != {b!r:.300}" for a, b in zip(mine, reference, strict=True) if a != b]

    assert await differences_from_dovecot(gateway, dovecot, other, compare) == []


async def test_another_accounts_noop_is_answered_while_a_huge_header_is_ingested(
        gateway, dovecot, monkeypatch):
    """Order of events, not timings: the ingest of a 50 MB header line is held in its worker
    thread, after its analysis and before its commit, until another account's NOOP has been
    answered; and every step whose cost grows with the header (arrival date, MIME analysis,
    sort fields) must have run off the trio thread (the arrival date used to be parsed on it,
    with the whole header: seconds during which no session was answered)."""
    raw = b"X-Big: " + b"a" * (50 * M) + b"\r\n" + TAIL + b"<p>body text</p>\r\n"
    gateway.deliver(raw)
    trio_thread = threading.current_thread()
    on_trio_thread: list[str] = []
    started, answered = threading.Event(), threading.Event()
    order: list[str] = []

    def watched(name, function):
        def run(*args, **kwargs):
            if threading.current_thread() is trio_thread:
                on_trio_thread.append(name)
            return function(*args, **kwargs)
        return run

    monkeypatch.setattr(ingest_batches, "internaldate",
                        watched("internaldate", ingest_batches.internaldate))
    monkeypatch.setattr(analysis, "analyze_for_store",
                        watched("analyze_for_store", analysis.analyze_for_store))
    monkeypatch.setattr(sortkeys, "extract_record", watched("extract_record", sortkeys.extract_record))
    real = ingest_batches.analysed

    def held(batch, *args):
        items = real(batch, *args)
        order.append("analysed")
        started.set()
        held_ok = answered.wait(60)   # bounded: a held event loop fails the test, never hangs it
        order.append("released" if held_ok else "timed out")
        return items

    monkeypatch.setattr(ingest_batches, "analysed", held)
    other = dovecot.add_user()

    def run() -> tuple[bytes, bytes]:
        bystander = imaplib.IMAP4("127.0.0.1", gateway.port, timeout=120)
        bystander.login(*other)
        bystander.select("INBOX")
        owner = threading.Thread(target=lambda: gateway.imaplib().logout())   # its login syncs
        owner.start()
        assert started.wait(120), "the ingest never started"
        assert bystander.noop()[0] == "OK"
        order.append("noop answered")
        answered.set()
        owner.join(120)
        bystander.logout()
        client = gateway.imaplib()
        count = selected(client, 1)
        typ, data = client.fetch("1", "(ENVELOPE BODY.PEEK[])")
        client.logout()
        return count, data[0][0] + hashlib.sha256(data[0][1]).hexdigest().encode()

    count, fetched = await trio.to_thread.run_sync(run)
    assert order == ["analysed", "noop answered", "released"]
    assert on_trio_thread == []
    assert count == b"1"
    assert fetched == (b'1 (ENVELOPE (NIL "" NIL NIL NIL NIL NIL NIL NIL NIL) BODY[] {%d}' % len(raw)
                       + hashlib.sha256(raw).hexdigest().encode())
