"""Differential test through the whole gateway (issue 7): the MIME corpus of
tests/gateway_mime/corpus.py is delivered to one Dovecot account, then read

  (a) through Dovecot's IMAP directly, and
  (b) through the gateway: ingested over POP3 from the same Dovecot account and read through the
      gateway's IMAP server (store, MIME cache, FETCH rendering, SEARCH, all of it),

and the two servers' answers are compared byte for byte (wire.py reads replies off imaplib's socket
without changing a byte). UIDs and sequence numbers need not agree between the two, so messages
are paired by the SHA-256 of their BODY[] (falling back to delivery order for a message whose
BODY[] differs: that difference is then reported) and SEARCH results are compared as sets of
those keys.

Only INTERNALDATE (Dovecot uses the file's mtime, the gateway the time of ingest) and FLAGS
(Dovecot's POP3 RETR sets \\Seen upstream) are not compared. Every other difference must be listed
in NO_FINAL_CRLF below, whose reason the test checks rather than assumes.
"""

from __future__ import annotations

import hashlib
import imaplib
import itertools
import socket

import trio
from gateway_mime import corpus, wire

from .conftest import select_stored

MESSAGES = corpus.corpus()

# The one irreducible difference. A message whose last line has no CRLF cannot cross POP3 as it
# is: every line of a multi-line POP3 response ends in CRLF (RFC 1939 3), so Dovecot's pop3 RETR
# appends one, and "X" and "X\r\n" (and "" and "\r\n") arrive as the same bytes. The gateway
# serves what POP3 delivered, so for these messages it must answer exactly as Dovecot answers for
# the message with a CRLF appended: the test delivers those variants to a second account and
# compares against that (and checks that POP3 really delivered the extra CRLF).
NO_FINAL_CRLF = {"msg_47.txt", "header-only-no-blank", "empty-message"}

ITEMS = [b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"RFC822.SIZE"]
SECTIONS = [
    b"BODY.PEEK[]", b"BODY.PEEK[HEADER]", b"BODY.PEEK[TEXT]", b"BODY.PEEK[1]", b"BODY.PEEK[1.MIME]",
    b"BODY.PEEK[2]", b"BODY.PEEK[2.MIME]", b"BODY.PEEK[1.1]", b"BODY.PEEK[2.HEADER]",
    b"BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]", b"BODY.PEEK[HEADER.FIELDS.NOT (FROM SUBJECT)]",
    b"BODY.PEEK[]<0.100>", b"BODY.PEEK[TEXT]<0.100>", b"BODY.PEEK[1]<10.50>",
]


def _u8(text: str) -> bytes:
    """A non-synchronizing literal (LITERAL+, RFC 7888; both servers advertise it)."""
    data = text.encode("utf-8")
    return b"{%d+}\r\n" % len(data) + data


SEARCHES: list[bytes] = [
    b"FROM example.com", b"FROM python.org", b"FROM \"Alice\"",
    b"SUBJECT test", b"SUBJECT needle-subj", b"SUBJECT inner", b"SUBJECT \"say \\\"hi\\\"\"",
    b"BODY needle-qp", b"BODY needle-b64", b"BODY needle-softbreak", b"BODY \"inner plain\"",
    b"TEXT inner_needle", b"TEXT needle", b"TEXT X-Foo",
    b"HEADER X-Foo bar", b"HEADER X-Empty \"\"", b"HEADER Message-ID mid", b"HEADER Content-Type multipart",
    b"LARGER 5000", b"SMALLER 300", b"NOT LARGER 1000", b"OR SUBJECT test FROM python",
    b"NOT (FROM a TO b)", b"OR (FROM python) (TO example)", b"NOT OR SUBJECT a SUBJECT e",
    b"SENTSINCE 1-Jan-2002", b"SENTBEFORE 1-Jan-2001", b"SENTON 7-Aug-2023",
    b"CHARSET UTF-8 SUBJECT " + _u8("Übergröße"),
    b"CHARSET UTF-8 FROM " + _u8("Jürgen"),
    b"CHARSET UTF-8 SUBJECT " + _u8("grüße"),
    b"CHARSET UTF-8 BODY " + _u8("café"),
    b"CHARSET UTF-8 TEXT " + _u8("Grüße"),
    b"CHARSET UTF-8 BODY " + _u8("körper"),
]

_tags = itertools.count(1)


def _command(client: imaplib.IMAP4, command: bytes) -> list[bytes]:
    tag = b"x%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    assert replies[-1].startswith(tag + b" OK"), (command, replies[-1])
    return replies[:-1]


def _fetch(client: imaplib.IMAP4, items: list[bytes]) -> dict[int, dict[bytes, bytes]]:
    out: dict[int, dict[bytes, bytes]] = {}
    for reply in _command(client, b"FETCH 1:* (" + b" ".join(items) + b")"):
        if b" FETCH " not in reply[:20]:
            continue
        seq, values = wire.fetch_items(reply)
        out.setdefault(seq, {}).update({k.upper(): v for k, v in values.items()})
    return out


def _search(client: imaplib.IMAP4, criteria: bytes) -> list[int]:
    lines = [r for r in _command(client, b"SEARCH " + criteria) if r.startswith(b"* SEARCH")]
    assert len(lines) == 1, lines
    return [int(n) for n in lines[0].split()[2:]]


def _keys(fetched: dict[int, dict[bytes, bytes]]) -> dict[int, str]:
    return {seq: hashlib.sha256(wire.string_value(v[b"BODY[]"]) or b"").hexdigest()
            for seq, v in fetched.items()}


def _pair(ours: dict[int, str], theirs: dict[int, str]) -> dict[int, int]:
    """gateway seq -> Dovecot seq: by BODY[] digest, the rest in delivery order."""
    by_key = {key: seq for seq, key in theirs.items()}
    pairs = {seq: by_key[key] for seq, key in ours.items() if key in by_key}
    rest_ours = sorted(set(ours) - set(pairs))
    rest_theirs = sorted(set(theirs) - set(pairs.values()))
    pairs.update(zip(rest_ours, rest_theirs, strict=False))
    return pairs


def dovecot_inbox(gateway) -> imaplib.IMAP4:
    """The gateway's user logged in to Dovecot's IMAP directly, INBOX selected read-only."""
    client = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port, timeout=30)
    client.login(gateway.user, gateway.password)
    client.select("INBOX", readonly=True)
    return client


def gateway_inbox(gateway, capability: str, count: int) -> imaplib.IMAP4:
    """The gateway's user logged in to the gateway, which advertises `capability`, INBOX
    selected read-only once it has all `count` messages."""
    client = gateway.imaplib()
    assert capability in client.capabilities
    select_stored(client, count)
    return client


def corpus_pairs(ours: imaplib.IMAP4, theirs: imaplib.IMAP4,
                 names: list[str]) -> list[tuple[int, int, str]]:
    """(gateway seq, Dovecot seq, name) for each message, `names` in delivery order, paired as
    `_pair` does; the NO_FINAL_CRLF ones, which cannot cross POP3 unchanged, left out."""
    pairs = _pair(_keys(_fetch(ours, [b"BODY.PEEK[]"])), _keys(_fetch(theirs, [b"BODY.PEEK[]"])))
    by_seq = dict(enumerate(names, 1))
    return [(seq, other, by_seq[other]) for seq, other in sorted(pairs.items())
            if by_seq[other] not in NO_FINAL_CRLF]


def _pop3_messages(dovecot, user: str, password: str) -> list[bytes]:
    """Every message of the account as Dovecot's POP3 RETR sends it (dot-unstuffed)."""
    with socket.create_connection((dovecot.host, dovecot.pop3_port), timeout=20) as sock:
        stream = sock.makefile("rb")

        def command(line: bytes, multi: bool = False) -> bytes:
            sock.sendall(line + b"\r\n")
            status = stream.readline()
            assert status.startswith(b"+OK"), (line, status)
            data = b""
            while multi:
                line = stream.readline()
                if line == b".\r\n":
                    break
                data += line[1:] if line.startswith(b"..") else line
            return data

        stream.readline()   # greeting
        command(b"USER " + user.encode())
        command(b"PASS " + password.encode())
        count = len(command(b"LIST", True).splitlines())
        messages = [command(b"RETR %d" % n, True) for n in range(1, count + 1)]
        command(b"QUIT")
    return messages


async def test_gateway_answers_like_dovecot(gateway):
    for _, raw in MESSAGES:
        gateway.deliver(raw)
    dovecot = gateway.dovecot
    variant_user, variant_password = dovecot.add_user()
    variants = [(name, raw + b"\r\n") for name, raw in MESSAGES if name in NO_FINAL_CRLF]
    assert len(variants) == len(NO_FINAL_CRLF)
    for _, raw in variants:
        dovecot.deliver(variant_user, raw)

    def compare() -> list[str]:
        pop3 = _pop3_messages(dovecot, gateway.user, gateway.password)
        for n, (name, raw) in enumerate(MESSAGES):
            assert pop3[n] == (raw + b"\r\n" if name in NO_FINAL_CRLF else raw), name
        variant = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=20)
        variant.login(variant_user, variant_password)
        variant.select("INBOX", readonly=True)
        fetched = [v for _, v in sorted(_fetch(variant, ITEMS + SECTIONS).items())]
        fixed = {name: values for (name, _), values in zip(variants, fetched, strict=True)}
        variant.logout()
        theirs = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=20)
        theirs.login(gateway.user, gateway.password)
        theirs.select("INBOX", readonly=True)
        ours = gateway.imaplib()   # the login fetches the whole account over POP3
        select_stored(ours, len(MESSAGES))
        bad: list[str] = []
        try:
            got = _fetch(ours, ITEMS + SECTIONS)
            want = _fetch(theirs, ITEMS + SECTIONS)
            assert len(got) == len(want) == len(MESSAGES)
            our_keys, their_keys = _keys(got), _keys(want)
            pairs = _pair(our_keys, their_keys)
            names = {seq: name for seq, (name, _) in enumerate(MESSAGES, 1)}   # delivery order
            for seq, other in sorted(pairs.items()):
                name = names[other]
                expected = fixed[name] if name in NO_FINAL_CRLF else want[other]
                for item, value in expected.items():
                    if item in (b"UID", b"FLAGS"):
                        continue
                    mine = got[seq].get(item)
                    if mine != value:
                        bad.append(f"{name} {item.decode()}\n  dovecot {value[:300]!r}\n"
                                   f"  gateway {(mine or b'<missing>')[:300]!r}")
            for criteria in SEARCHES:
                found = {pairs[s] for s in _search(ours, criteria)}
                expected_set = set(_search(theirs, criteria))
                if found != expected_set:
                    diff = sorted(names[s] + (" (dovecot only)" if s in expected_set else
                                              " (gateway only)") for s in found ^ expected_set)
                    bad.append(f"SEARCH {criteria!r}: {diff}")

            # each message exactly once: the pairing is one to one
            assert sorted(pairs.values()) == sorted(want), "messages lost or duplicated"
        finally:
            ours.logout()
            theirs.logout()
        return bad

    bad = await trio.to_thread.run_sync(compare)
    assert not bad, f"{len(bad)} differences:\n" + "\n".join(bad[:30])
