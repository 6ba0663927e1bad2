"""SAVEDATE (RFC 8514) against Dovecot IMAP, which offers it: the same APPENDs (one with an old
internal date), COPY and SEARCH SAVED*/SAVEDATESUPPORTED commands sent to both, results compared
(the save date as a day of the server's zone: both servers take the process's local zone). OBJECTID
(RFC 8474) after the RFC's own examples, as Dovecot 2.3.19 does not offer it: MAILBOXID from
CREATE, SELECT and STATUS, kept by RENAME and new for a new mailbox; EMAILID shared by a copy,
THREADID NIL; SEARCH EMAILID/THREADID. Their stability across `gateway migrate` is checked in
test_migrate.py."""

from __future__ import annotations

import datetime as dt
import imaplib
import itertools
import re
import time
import types

import pytest
import trio
from gateway_mime import wire

from proxy.gateway import search
from proxy.gateway.imapd._fetch import Item, render
from proxy.imap import Atom
from proxy.store import MessageMeta

from .conftest import GatewayHandle, differences_from_dovecot, message

_tags = itertools.count(1)
OLD_DATE = b'"17-May-2020 10:30:00 +0200"'


def _run(client: imaplib.IMAP4, command: bytes) -> list[bytes]:
    """Untagged lines, then the tagged one (CRLF removed)."""
    tag = b"s%d" % next(_tags)
    client.send(tag + b" " + command + b"\r\n")
    lines = wire.read_response(client.readline, client.read, tag)
    return [line.rstrip(b"\r\n") for line in lines]


def _append(target: bytes, body: bytes, date: bytes = b"") -> bytes:
    return b"APPEND " + target + (b" " + date if date else b"") + b" {%d+}\r\n" % len(body) + body


def _imap_date(day: dt.date) -> bytes:
    return day.strftime("%d-%b-%Y").encode()


def _saved_days(lines: list[bytes]) -> list[dt.date | None]:
    """The day of each SAVEDATE in FETCH responses (NIL as None)."""
    return [dt.datetime.strptime(m.group(1).decode(), "%d-%b-%Y").date() if m.group(1) else None
            for m in re.finditer(rb'SAVEDATE (?:" ?(\S+) [^"]*"|NIL)', b"\n".join(lines))]


def _searches(today: dt.date) -> list[bytes]:
    day, tomorrow = _imap_date(today), _imap_date(today + dt.timedelta(days=1))
    return [b"SEARCH SAVEDATESUPPORTED", b"SEARCH SAVEDSINCE " + day, b"SEARCH SAVEDON " + day,
            b"SEARCH SAVEDBEFORE " + day, b"SEARCH SAVEDBEFORE " + tomorrow,
            b"SEARCH SAVEDSINCE " + tomorrow, b"SEARCH SINCE " + day,
            b"SEARCH OR SAVEDON 17-May-2020 ON 17-May-2020", b"SEARCH NOT SAVEDON " + day,
            b"UID SEARCH SAVEDON " + day, b"SEARCH SAVEDON", b"SEARCH SAVEDON 32-Foo-2020"]


async def test_savedate_answers_like_dovecot(dovecot, tmp_path, nursery, gateway_store):
    """The day searched for is the one both servers saved the messages on (read back with FETCH
    SAVEDATE), never the clock's: the test holds at any time of day. A run whose two APPENDs
    fell on either side of midnight is done again in new mailboxes."""
    user, password = dovecot.add_user()
    other = dovecot.add_user()   # Dovecot's side: not the gateway's POP3 mailbox
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    first_day = dt.date.today()   # the server's zone (the process's, for both servers)
    gateway.deliver(message(1))
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        for client in (ours, theirs):
            assert b"SAVEDATE" in _run(client, b"CAPABILITY")[0].split()
        bad = []

        def both(command: bytes) -> tuple[list[bytes], list[bytes]]:
            want, got = _run(theirs, command), _run(ours, command)
            if want[-1].split()[1] != got[-1].split()[1]:   # OK, NO or BAD
                bad.append(f"{command!r}: dovecot {want[-1]!r} gateway {got[-1]!r}")
            return want, got

        for attempt in (b"1", b"2"):
            work, copies = b"Work" + attempt, b"Copies" + attempt
            for command in (b"CREATE " + work, b"CREATE " + copies,
                            _append(work, message(2), OLD_DATE), _append(work, message(3)),
                            b"SELECT " + work, b"COPY 1 " + copies,
                            b"STORE 1:2 +FLAGS (\\Flagged)"):   # a flag change keeps the save date
                both(command)
            saved = [_saved_days(x) for x in both(b"FETCH 1:* (SAVEDATE)")]
            if len(set(saved[0] + saved[1])) == 1:
                break
        else:
            return bad + [f"save days differ in two runs: {saved}"]
        today = saved[0][0]
        for command in _searches(today):
            want, got = both(command)
            if want[:-1] != got[:-1]:
                bad.append(f"{command!r}\n  dovecot {want[:-1]}\n  gateway {got[:-1]}")
        for box in (work, copies):
            both(b"EXAMINE " + box)
            want, got = both(b"FETCH 1:* (SAVEDATE)")
            if _saved_days(want) != _saved_days(got) or _saved_days(got) != [today] * (
                    2 if box == work else 1):
                bad.append(f"SAVEDATE in {box!r}\n  dovecot {want}\n  gateway {got}")
        # the internal date is the APPEND's, the save date the COPY's
        internal = _run(ours, b"FETCH 1 (INTERNALDATE SAVEDATE)")[0]
        assert b'INTERNALDATE "17-May-2020 10:30:00 +0200" SAVEDATE "' in internal
        assert _saved_days([internal]) == [today]
        # ingested from POP3 when the gateway started: saved then
        _run(ours, b"EXAMINE INBOX")
        [ingested] = _saved_days(_run(ours, b"FETCH 1 (SAVEDATE)"))
        assert ingested is not None and first_day <= ingested <= today
        return bad

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, "\n".join(bad)


async def test_objectid_mailboxid_emailid_threadid(gateway):
    def scenario():
        client = gateway.imaplib()
        assert b"OBJECTID" in _run(client, b"CAPABILITY")[0].split()
        created = _run(client, b"CREATE foo")[-1]
        found = re.fullmatch(rb"\S+ OK \[MAILBOXID \(([A-Za-z0-9_-]+)\)\] CREATE completed\.",
                             created)
        assert found, created
        foo = found.group(1)
        assert re.fullmatch(rb"M[A-Za-z0-9_-]{20}", foo), foo   # 8474 7: a keyed hash, no row id
        assert _run(client, b"STATUS foo (MAILBOXID UIDNEXT)")[0] == \
            b"* STATUS foo (MAILBOXID (%s) UIDNEXT 1)" % foo
        assert _run(client, b"RENAME foo bar")[-1].split()[1] == b"OK"   # 4.1: the id stays
        assert _run(client, b"STATUS bar (MAILBOXID)")[0] == b"* STATUS bar (MAILBOXID (%s))" % foo
        again = re.search(rb"MAILBOXID \((\S+)\)", _run(client, b"CREATE foo")[-1]).group(1)
        assert again != foo   # a new mailbox, a new id (never reused)
        inbox = re.search(rb"MAILBOXID \((\S+)\)", _run(client, b"STATUS INBOX (MAILBOXID)")[0])
        assert inbox.group(1) not in (foo, again)
        for n in (1, 2):
            assert _run(client, _append(b"bar", message(n)))[-1].split()[1] == b"OK"
        selected = _run(client, b"SELECT bar")
        assert b"* OK [MAILBOXID (%s)] Ok" % foo in selected
        assert _run(client, b"COPY 1 foo")[-1].split()[1] == b"OK"
        fetched = _run(client, b"FETCH 1:* (EMAILID THREADID)")[:-1]
        ids = [re.fullmatch(rb"\* \d FETCH \(EMAILID \(([A-Za-z0-9_-]+)\) THREADID NIL\)",
                            line).group(1) for line in fetched]
        assert len(ids) == 2 and ids[0] != ids[1]
        assert _run(client, b"SEARCH EMAILID " + ids[1])[0] == b"* SEARCH 2"
        assert _run(client, b"UID SEARCH EMAILID " + ids[0])[0] == b"* SEARCH 1"
        assert _run(client, b"SEARCH EMAILID " + ids[0].lower())[0] == b"* SEARCH"   # case matters
        assert _run(client, b"SEARCH THREADID T1")[0] == b"* SEARCH"
        _run(client, b"EXAMINE foo")   # 5.1: the copy keeps the EMAILID
        assert _run(client, b"FETCH 1 (EMAILID)")[0] == b"* 1 FETCH (EMAILID (%s))" % ids[0]
        client.logout()

    await trio.to_thread.run_sync(scenario)


@pytest.fixture
def kiritimati(monkeypatch):
    """The process in UTC+14 (what the gateway and a Dovecot started from it take as local)."""
    monkeypatch.setenv("TZ", "KIR-14")   # POSIX: UTC+14, no zone database needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_savedate_is_a_day_of_the_servers_zone(kiritimati):
    """RFC 8514 4.3 compares save dates "disregarding time and timezone"; a save date has no
    zone of its own, so the day is the server's, as Dovecot does (its local zone): saved at
    20:00 UTC on 17 May is 18 May at UTC+14. FETCH SAVEDATE shows it in that zone too. The
    internal date keeps its own zone (RFC 3501 6.4.4)."""
    saved = dt.datetime(2024, 5, 17, 20, 0, tzinfo=dt.timezone.utc)
    internal = dt.datetime(2024, 5, 17, 21, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    msg = types.SimpleNamespace(seq=1, uid=1, saved=saved, internaldate=internal)
    for key, hit in ((b"SAVEDON 18-May-2024", True), (b"SAVEDON 17-May-2024", False),
                     (b"SAVEDBEFORE 18-May-2024", False), (b"SAVEDSINCE 18-May-2024", True),
                     (b"ON 17-May-2024", True), (b"ON 18-May-2024", False)):
        assert search.matches(search.parse_search([Atom(a) for a in key.split()]), msg) is hit, key
    meta = MessageMeta(1, 1, 1, internal, 10, frozenset(), 1, 1, None, saved)
    [line] = render(1, meta, [Item(b"SAVEDATE")], frozenset(), None, None)
    assert line == b'* 1 FETCH (SAVEDATE "18-May-2024 10:00:00 +1400")\r\n'
