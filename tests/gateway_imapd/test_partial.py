"""SEARCH/UID SEARCH RETURN (PARTIAL x:y) and SORT RETURN (PARTIAL x:y) (RFC 5267 4.4): the same
commands sent to Dovecot IMAP (its CONTEXT=SEARCH and ESORT take PARTIAL) and to the gateway on
the same messages, ESEARCH lines compared; RFC 9394's ranges counted from the end (-x:-y), which
Dovecot 2.3.19 refuses, after the RFC's text; PARTIAL with a MODSEQ criterion (RFC 7162 3.1.5)."""

from __future__ import annotations

import imaplib
import itertools
import re

import trio
from gateway_mime import wire

from .conftest import GatewayHandle, differences_from_dovecot, message

_tags = itertools.count(1)
COUNT = 12
BOTH = [b"SEARCH RETURN (PARTIAL 1:5) ALL", b"UID SEARCH RETURN (PARTIAL 3:4) SUBJECT message",
        b"SEARCH RETURN (PARTIAL 5:1) ALL", b"SEARCH RETURN (PARTIAL 10:20) ALL",
        b"SEARCH RETURN (PARTIAL 20:30) ALL", b"SEARCH RETURN (COUNT PARTIAL 2:3) ALL",
        b"SEARCH RETURN (PARTIAL 2:3 MIN) NOT DELETED", b"SEARCH RETURN (PARTIAL 1:2) UID 4:6",
        b"SEARCH RETURN (PARTIAL 0:3) ALL", b"SEARCH RETURN (PARTIAL) ALL",
        b"SEARCH RETURN (PARTIAL 1:x) ALL",
        b"SORT RETURN (PARTIAL 2:4) (SUBJECT) UTF-8 ALL",
        b"UID SORT RETURN (PARTIAL 1:3 COUNT) (REVERSE SUBJECT) UTF-8 ALL"]


def _run(client: imaplib.IMAP4, command: bytes) -> list[bytes]:
    tag = b"p%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    lines = wire.read_response(client.readline, client.read, tag)
    # the tag echoed in ESEARCH, and the reply's text, differ between the servers
    return [re.sub(rb'\(TAG "[^"]+"\)', b'(TAG "t")', line.rstrip(b"\r\n")) for line in lines[:-1]] \
        + [lines[-1].split()[1]]


def mismatches(ours: imaplib.IMAP4, theirs: imaplib.IMAP4, commands) -> list[str]:
    """Each command sent to Dovecot, then to the gateway; one entry per differing answer."""
    bad = []
    for command in commands:
        want, got = _run(theirs, command), _run(ours, command)
        if want != got:
            bad.append(f"{command!r}\n  dovecot {want}\n  gateway {got}")
    return bad


def _esearch(lines: list[bytes]) -> bytes:
    [line] = [line for line in lines if line.startswith(b"* ESEARCH ")]
    return line


async def test_partial_answers_like_dovecot(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    other = dovecot.add_user()   # Dovecot's side: not the gateway's POP3 mailbox
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        assert b"PARTIAL" in _run(ours, b"CAPABILITY")[0].split()
        for client in (ours, theirs):
            _run(client, b"CREATE Work")
            for n in range(COUNT):   # subjects out of arrival order, for SORT
                body = message(n, subject=f"message {(n * 5) % COUNT:02d}")
                _run(client, b"APPEND Work {%d+}\r\n" % len(body) + body)
            _run(client, b"SELECT Work")
            _run(client, b"STORE 2 +FLAGS (\\Deleted)")
        return mismatches(ours, theirs, BOTH)

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, "\n".join(bad)


async def test_partial_from_the_end_rfc_9394(gateway):
    def scenario():
        client = gateway.imaplib()
        _run(client, b"CREATE Work")
        for n in range(COUNT):
            body = message(n, subject=f"message {n:02d}")
            _run(client, b"APPEND Work {%d+}\r\n" % len(body) + body)
        _run(client, b"SELECT Work")
        assert _run(client, b"SEARCH RETURN (PARTIAL -1:-3) ALL") == [
            b'* ESEARCH (TAG "t") PARTIAL (-1:-3 10:12)', b"OK"]
        assert _run(client, b"UID SEARCH RETURN (PARTIAL -3:-1) UID 2:5") == [
            b'* ESEARCH (TAG "t") UID PARTIAL (-1:-3 3:5)', b"OK"]
        assert _run(client, b"SEARCH RETURN (PARTIAL -11:-20) ALL") == [
            b'* ESEARCH (TAG "t") PARTIAL (-11:-20 1:2)', b"OK"]
        assert _run(client, b"SEARCH RETURN (PARTIAL -13:-20) ALL") == [
            b'* ESEARCH (TAG "t") PARTIAL (-13:-20 NIL)', b"OK"]
        # SORT: positions in sort order, the window kept in that order
        assert _run(client, b"SORT RETURN (PARTIAL -1:-2) (REVERSE SUBJECT) UTF-8 ALL") == [
            b'* ESEARCH (TAG "t") PARTIAL (-1:-2 2,1)', b"OK"]
        assert _run(client, b"SEARCH RETURN (PARTIAL -1:3) ALL") == [b"BAD"]
        # RFC 7162 3.1.5 with PARTIAL alone: the MODSEQ of the messages returned
        _run(client, b"STORE 12 +FLAGS (\\Flagged)")
        top = _esearch(_run(client, b"SEARCH RETURN (PARTIAL 1:2) MODSEQ 1"))
        low = _run(client, b"FETCH 2 (MODSEQ)")[0]
        assert re.fullmatch(rb'\* ESEARCH \(TAG "t"\) PARTIAL \(1:2 1:2\) MODSEQ (\d+)', top)
        assert top.rsplit(b" ", 1)[1] == re.search(rb"MODSEQ \((\d+)\)", low).group(1)
        assert _esearch(_run(client, b"SEARCH RETURN (PARTIAL 20:30) MODSEQ 1")) == \
            b'* ESEARCH (TAG "t") PARTIAL (20:30 NIL)'
        client.logout()

    await trio.to_thread.run_sync(scenario)
