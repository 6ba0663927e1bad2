"""MULTIAPPEND (RFC 3502) against Dovecot IMAP: the same APPEND commands (several messages with
their own flags and dates; a bad date, an empty message or a missing mailbox in one of them)
sent to both, compared as status with response code and as what the mailbox then holds (UID,
flags, INTERNALDATE, size, body). Atomicity (3502 3: none appended when one fails) is checked on
both through STATUS; over the gateway's quota on the gateway alone (Dovecot's test config has no
quota here), and the bound on all literals of one command (`max_literal`) too.
"""

from __future__ import annotations

import email.utils
import imaplib
import itertools
import re

from gateway_mime import wire

from .conftest import GatewayHandle, differences_from_dovecot, message

_tags = itertools.count(1)
_STATUS = re.compile(rb"^\S+ (OK|NO|BAD)(?: \[([A-Z-]+))?")
DATE = b'"17-May-2024 10:30:00 +0200"'
GIVEN = email.utils.parsedate_to_datetime("17 May 2024 10:30:00 +0200")


def _literal(body: bytes) -> bytes:
    return b"{%d+}\r\n" % len(body) + body


def _append(target: bytes, *parts: tuple[bytes, bytes | None, bytes]) -> bytes:
    out = b"APPEND " + target
    for flags, date, body in parts:
        out += (b" " + flags if flags else b"") + (b" " + date if date else b"") + b" " + _literal(body)
    return out


M1, M2, M3 = message(1), message(2, body="second " * 50), message(3, subject="third")
COMMANDS = [
    _append(b"Work", (b"(\\Seen)", DATE, M1), (b"(\\Flagged $Work)", None, M2), (None, None, M3)),
    _append(b"Work", (None, None, M3)),                                  # plain APPEND still
    _append(b"Work", (None, None, M1)) + b' (\\Seen) "32-Foo-2024 99:00:00 +0000"',   # BAD
    _append(b"Work", (None, None, M1), (None, None, b"")),               # empty: NO, atomic
    _append(b"Nowhere", (None, None, M1), (None, None, M2)),            # NO [TRYCREATE]
    _append(b"Work", (None, None, M2), (b"(\\Draft)", DATE, M1)),
    b"APPEND Work (\\Seen)",                                            # no message: BAD
]


def _run(client: imaplib.IMAP4, command: bytes) -> tuple[tuple, list[bytes]]:
    """(status, response code, the APPENDUID set or None), untagged lines."""
    tag = b"m%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    uids = re.search(rb"\[APPENDUID \d+ ([0-9:,]+)\]", replies[-1])
    return (*_STATUS.match(replies[-1]).groups(), uids and uids.group(1)), replies[:-1]


def _holds(client: imaplib.IMAP4) -> list:
    """What Work holds: per message UID, flag set, INTERNALDATE, size, body."""
    _run(client, b"EXAMINE Work")
    out = []
    for line in _run(client, b"UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")[1]:
        uid = re.search(rb"UID (\d+)", line).group(1)
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).split()) - {b"\\Recent"}
        # the given date as the same instant (Dovecot's maildir keeps no zone: it answers in
        # +0000); without one, the time of the APPEND, whose second may differ between servers
        date = email.utils.parsedate_to_datetime(
            re.search(rb'INTERNALDATE "([^"]+)"', line).group(1).decode().replace("-", " ", 2))
        date = date if date == GIVEN else "time of the APPEND"
        size = re.search(rb"RFC822.SIZE (\d+)", line).group(1)
        body = line[line.index(b"}\r\n") + 3:]
        out.append((uid, sorted(flags), date, size, body))
    _run(client, b"CLOSE")
    return out


async def test_multiappend_answers_like_dovecot(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    other = dovecot.add_user()   # Dovecot's side: not the gateway's POP3 mailbox
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        assert "MULTIAPPEND" in ours.capabilities
        bad = []
        for client in (ours, theirs):
            _run(client, b"CREATE Work")
        for command in COMMANDS:
            want, got = _run(theirs, command)[0], _run(ours, command)[0]
            if want != got:
                bad.append(f"{command[:60]!r}\n  dovecot {want}\n  gateway {got}")
            mine = _run(ours, b"STATUS Work (MESSAGES UIDNEXT)")[1]
            theirs_status = _run(theirs, b"STATUS Work (MESSAGES UIDNEXT)")[1]
            if mine != theirs_status:   # 3502 3: a failed MULTIAPPEND appended nothing
                bad.append(f"after {command[:60]!r}: dovecot {theirs_status} gateway {mine}")
        want, got = _holds(theirs), _holds(ours)
        if want != got:
            bad.append(f"Work holds\n  dovecot {want}\n  gateway {got}")
        return bad

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, "\n".join(bad)
