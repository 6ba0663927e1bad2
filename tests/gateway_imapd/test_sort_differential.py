"""Differential test of SORT, ESORT/PARTIAL, THREAD, SEARCHRES and WITHIN (issue 17) against Dovecot
IMAP: the MIME corpus (tests/gateway_mime/corpus.py) plus generated threads (threads_corpus.py: missing
parents, loops in References, In-Reply-To only, duplicate Message-IDs, subject-only threads,
equal and missing dates, address variants, a deep chain) are delivered to one Dovecot account,
then the same commands go to Dovecot's IMAP directly and to the gateway (which ingested the
account over POP3), and the untagged answers must be byte for byte the same.

Messages without a final CRLF get one before delivery: POP3 cannot carry them otherwise (see
test_differential.NO_FINAL_CRLF), and SIZE must see the same bytes on both sides. Each gets a
Received: header whose date is its INTERNALDATE on both sides (the gateway reads it at ingest,
Dovecot's maildir file gets it as mtime). Sequence numbers and UIDs agree because both servers
number the messages in delivery order.
"""

from __future__ import annotations

import email.utils
import imaplib
import itertools
import os
import pathlib
import time

import trio
from gateway_mime import corpus, wire

from proxy.gateway.fetcher import internaldate

from . import threads_corpus
from .conftest import select_stored

SORTS = [
    b"(ARRIVAL)", b"(CC)", b"(DATE)", b"(FROM)", b"(SIZE)", b"(SUBJECT)", b"(TO)",
    b"(DISPLAYFROM)", b"(DISPLAYTO)",
    b"(REVERSE ARRIVAL)", b"(REVERSE CC)", b"(REVERSE DATE)", b"(REVERSE FROM)",
    b"(REVERSE SIZE)", b"(REVERSE SUBJECT)", b"(REVERSE TO)", b"(REVERSE DISPLAYFROM)",
    b"(REVERSE DISPLAYTO)",
    b"(SUBJECT DATE)", b"(FROM REVERSE DATE)", b"(REVERSE SUBJECT REVERSE SIZE)",
    b"(TO CC SUBJECT)", b"(DISPLAYFROM SIZE)",
]
CRITERIA = [b"UTF-8 ALL", b"US-ASCII SUBJECT re", b"UTF-8 FROM example.org",
            b"UTF-8 NOT SUBJECT weekly", b"US-ASCII 10:60"]
COMMANDS: list[bytes] = (
    [b"SORT " + s + b" UTF-8 ALL" for s in SORTS]
    + [b"UID SORT " + s + b" " + c for s in SORTS[:9] for c in CRITERIA[1:]]
    + [b"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL",
       b"SORT RETURN () (REVERSE SUBJECT) UTF-8 ALL",
       b"SORT RETURN (COUNT) (SIZE) UTF-8 SUBJECT nothing-matches-this",
       b"SORT RETURN (MIN MAX) (SIZE) UTF-8 SUBJECT nothing-matches-this",
       b"UID SORT RETURN (MIN MAX ALL) (REVERSE FROM) UTF-8 ALL",
       b"SORT RETURN (PARTIAL 1:10) (DATE) UTF-8 ALL",
       b"SORT RETURN (PARTIAL 30:5) (SUBJECT) UTF-8 ALL",
       b"UID SORT RETURN (PARTIAL 100:300) (ARRIVAL) UTF-8 ALL",
       b"SORT RETURN (PARTIAL 5000:5001) (ARRIVAL) UTF-8 ALL"]
    + [verb + b" " + algorithm + b" " + c
       for verb in (b"THREAD", b"UID THREAD")
       for algorithm in (b"REFERENCES", b"ORDEREDSUBJECT") for c in CRITERIA]
    # SEARCHRES (RFC 5182): saved results used by later commands, in this order
    + [b"SEARCH RETURN (SAVE) SUBJECT re", b"FETCH $ (UID)", b"SORT (DATE) UTF-8 $",
       b"SEARCH RETURN (SAVE MIN MAX) FROM example.org", b"UID SEARCH $",
       b"SORT RETURN (SAVE MAX) (SIZE) UTF-8 ALL", b"SEARCH $",
       b"SORT RETURN (SAVE ALL) (REVERSE SUBJECT) UTF-8 SUBJECT plan",
       b"THREAD REFERENCES UTF-8 OR $ SUBJECT chain", b"SEARCH RETURN (SAVE) SUBJECT no-such",
       b"UID FETCH $ (UID)", b"SEARCH NOT $"]
)

_tags = itertools.count(1)


def _deliverable(n: int, raw: bytes) -> bytes:
    """A final CRLF (see the module docstring) and a Received: header whose date becomes the
    INTERNALDATE on both sides (never "now", which the two servers would take at different
    moments); every third message shares its INTERNALDATE with the next ones (ties)."""
    when = email.utils.formatdate(1600000000 + (n // 3) * 3600)
    received = b"Received: from a.example by b.example; %s\r\n" % when.encode()
    return received + (raw if raw.endswith(b"\r\n") else raw + b"\r\n")


def _answer(client: imaplib.IMAP4, command: bytes) -> list[bytes]:
    tag = b"s%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    assert replies[-1].startswith(tag + b" OK"), (command, replies[-1])
    # the ESEARCH correlator carries our own tag: make it the same on both sides
    return [r.replace(b'(TAG "%s")' % tag, b'(TAG "*")') for r in replies[:-1]
            if r.startswith((b"* SORT", b"* THREAD", b"* ESEARCH", b"* SEARCH"))
            or (b" FETCH (UID " in r[:24] and b"FLAGS" not in r)]


def _difference(command: bytes, want: list[bytes], got: list[bytes]) -> str:
    """The command and both answers from just before the first byte that differs."""
    a, b = b"\n".join(want), b"\n".join(got)
    at = next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, at - 60)
    return (f"{command.decode()} (from byte {start})\n  dovecot {a[start:start + 300]!r}\n"
            f"  gateway {b[start:start + 300]!r}")


def _within(now: float) -> list[bytes]:
    """RFC 5032: intervals ending half-way between two INTERNALDATEs (see _deliverable)."""
    out = []
    for hours in (0, 10, 30, 1000):
        edge = now - (1600000000 + hours * 3600 + 1800)
        out += [b"SEARCH OLDER %d" % edge, b"SEARCH YOUNGER %d" % edge,
                b"SORT (DATE) UTF-8 YOUNGER %d" % edge]
    return out


def _same_internaldate(maildir: pathlib.Path) -> None:
    """Give Dovecot's copies the INTERNALDATE the gateway gives them at ingest (Dovecot takes a
    maildir file's mtime), so ARRIVAL, and DATE where Date: is missing, compare the same."""
    for path in (maildir / "new").iterdir():
        stamp = internaldate(path.read_bytes()).timestamp()
        os.utime(path, (stamp, stamp))


async def test_sort_and_thread_answer_like_dovecot(gateway):
    originals = [raw for _, raw in corpus.corpus()] + threads_corpus.messages()
    messages = [_deliverable(n, raw) for n, raw in enumerate(originals)]
    for raw in messages:
        gateway.deliver(raw)
    dovecot = gateway.dovecot
    _same_internaldate(dovecot.maildir(gateway.user))

    def compare() -> list[str]:
        ours = gateway.imaplib()   # first: its POP3 ingest sets \\Seen on Dovecot's copies
        select_stored(ours, len(messages))
        theirs = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
        theirs.login(gateway.user, gateway.password)
        theirs.select("INBOX", readonly=True)
        caps = ours.capabilities
        for cap in ("SORT", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES",
                    "THREAD=ORDEREDSUBJECT", "SEARCHRES", "WITHIN"):
            assert cap in caps, cap
        bad = []
        try:
            for command in COMMANDS + _within(time.time()):
                want, got = _answer(theirs, command), _answer(ours, command)
                if got != want:
                    bad.append(_difference(command, want, got))
        finally:
            ours.logout()
            theirs.logout()
        return bad

    bad = await trio.to_thread.run_sync(compare)
    assert not bad, f"{len(bad)} of {len(COMMANDS)} differ:\n" + "\n".join(bad[:25])
