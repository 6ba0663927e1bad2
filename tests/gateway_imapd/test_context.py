"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 4): SEARCH/SORT RETURN (UPDATE), ADDTO/REMOVEFROM
as another session (or this one, or the POP3 fetcher) changes the mailbox, CANCELUPDATE,
NOUPDATE past `gateway.limits.search_updates`.

SEARCH contexts are compared with Dovecot 2.3 (it has CONTEXT=SEARCH): the same script, with the
same tags, against both servers, a watching session and a changing one on each; the ESEARCH,
EXISTS and EXPUNGE lines the watcher gets and every tagged status must be equal. Dovecot lacks
CONTEXT=SORT, so SORT contexts are checked against the RFC: a client applying each ADDTO and
REMOVEFROM at its context position (4.3.3, 4.3.4) and renumbering on EXPUNGE must always hold
exactly what a fresh SORT answers."""

from __future__ import annotations

import imaplib
import re

import pytest
import trio
from gateway_mime import wire

from proxy.gateway.imapd import _context_refresh
from support.polling import wait_for

from .conftest import GatewayHandle, message
from .test_condstore import Raw
from .test_replicas import Idle, gateway_config

_KEPT = re.compile(rb"^\* (ESEARCH |\d+ EXPUNGE|NO \[NOUPDATE)")


def _cmd(client: imaplib.IMAP4, tag: str, command: str | bytes) -> list[bytes]:
    data = command.encode() if isinstance(command, str) else command
    client.send(tag.encode() + b" " + data + b"\r\n")
    return [line.rstrip(b"\r\n") for line in
            wire.read_response(client.readline, client.read, tag.encode())]


def _kept(lines: list[bytes]) -> list[bytes]:
    """What a context changes: ESEARCH, EXPUNGE, NOUPDATE; and the tagged status. (EXISTS is
    left out: when a batch has both, Dovecot sends EXPUNGE first and the gateway EXISTS first,
    RFC 3501 allows either; an ADDTO must follow the EXISTS, 4.3.3.)"""
    exists = [n for n, line in enumerate(lines) if line.endswith(b" EXISTS")]
    addto = [n for n, line in enumerate(lines) if b" ADDTO " in line]
    assert not exists or not addto or min(addto) > max(exists), lines
    return [line for line in lines[:-1] if _KEPT.match(line)] + [lines[-1].split()[1]]


def _append(client: imaplib.IMAP4, tag: str, n: int) -> list[bytes]:
    body = message(n, subject=f"message {n:02d}")
    return _cmd(client, tag, b"APPEND Work {%d+}\r\n" % len(body) + body)


# (who, command): A watches, B changes. Tags are the same on both servers.
SCRIPT = [
    ("A", "SEARCH RETURN (UPDATE) UNSEEN"),
    ("A", "UID SEARCH RETURN (UPDATE COUNT) FLAGGED"),
    ("A", 'UID SEARCH RETURN (UPDATE) SUBJECT "message 1"'),
    ("A", "SEARCH RETURN (UPDATE MIN) 2:5 UNDELETED"),
    ("A", "UID SEARCH RETURN (CONTEXT UPDATE PARTIAL 1:3) ALL"),
    ("A", "UID SEARCH RETURN (CONTEXT COUNT) SEEN"),
    ("A", "SEARCH RETURN (UPDATE) ALL"),                    # tag reuse: BAD
    ("B", "STORE 3 +FLAGS (\\Seen)"), ("A", "NOOP"),
    ("B", "STORE 4 +FLAGS (\\Flagged)"), ("A", "NOOP"),
    ("B", "APPEND"), ("A", "NOOP"),
    ("B", "STORE 3 +FLAGS (\\Deleted)"), ("A", "NOOP"),
    ("B", "EXPUNGE"), ("A", "NOOP"),
    ("A", "STORE 1 +FLAGS (\\Seen)"),                       # this session's own change
    ("A", 'CANCELUPDATE "a1"'),
    ("A", 'CANCELUPDATE "nosuch"'),
    ("A", "CANCELUPDATE a2"),
    ("B", "STORE 2 -FLAGS (\\Seen)"), ("A", "NOOP"),         # a1 is cancelled
    ("B", "COPY 1 Work"), ("A", "NOOP"),
    ("B", "STORE 1:* +FLAGS (\\Flagged)"), ("A", "NOOP"),
    ("B", "STORE 2,5 -FLAGS (\\Flagged)"), ("B", "EXPUNGE"), ("A", "NOOP"),
    ("B", "APPEND"), ("B", "STORE 1 +FLAGS (\\Deleted)"), ("B", "EXPUNGE"), ("A", "NOOP"),
    ("A", "UNSELECT"), ("A", "SELECT Work"),
    ("B", "STORE 1:* -FLAGS (\\Flagged)"), ("A", "NOOP"),   # updates ended with the selection
]


def _run_script(a: imaplib.IMAP4, b: imaplib.IMAP4) -> list[tuple[str, list[bytes]]]:
    _cmd(a, "s1", "CREATE Work")
    for n in range(10):
        _append(a, f"s{n + 2}", n)
    _cmd(a, "s20", "SELECT Work")
    _cmd(a, "s21", "STORE 2,4 +FLAGS (\\Seen)")
    _cmd(a, "s22", "STORE 7 +FLAGS (\\Flagged)")
    _cmd(b, "s23", "SELECT Work")
    out, appended = [], 10
    for n, (who, command) in enumerate(SCRIPT, 1):
        tag = f"{who.lower()}{n}"
        if command == "APPEND":
            lines = _append(b, tag, appended)
            appended += 1
        else:
            lines = _cmd(a if who == "A" else b, tag, command)
        out.append((f"{tag} {command}", _kept(lines) if who == "A" else [lines[-1].split()[1]]))
    return out


async def test_search_updates_like_dovecot(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    other = dovecot.add_user()   # Dovecot's side: not the gateway's POP3 mailbox
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await gateway.start(nursery)

    def compare() -> list[str]:
        def dovecot_session() -> imaplib.IMAP4:
            client = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
            client.login(*other)
            return client

        theirs_a, theirs_b = dovecot_session(), dovecot_session()
        assert b"CONTEXT=SEARCH" in _cmd(theirs_a, "c0", "CAPABILITY")[0].split()
        ours_a, ours_b = gateway.imaplib(), gateway.imaplib()
        caps = _cmd(ours_a, "c0", "CAPABILITY")[0].split()
        assert b"CONTEXT=SEARCH" in caps and b"CONTEXT=SORT" in caps
        want, got = _run_script(theirs_a, theirs_b), _run_script(ours_a, ours_b)
        for client in (theirs_a, theirs_b, ours_a, ours_b):
            client.logout()
        return [f"{w[0]}\n  dovecot {w[1]}\n  gateway {g[1]}" for w, g in zip(want, got, strict=True)
                if w != g]

    try:
        bad = await trio.to_thread.run_sync(compare)
    finally:
        await gateway.stop()
    assert not bad, "\n".join(bad)


# ---- SORT contexts, against the RFC ---------------------------------------------------------------

class Model:
    """A client's copy of one context's result (RFC 5267 4.3.2-4.3.4), numbers as sent."""

    def __init__(self, tag: str, numbers: list[int]):
        self.tag, self.numbers = tag.encode(), list(numbers)

    def apply(self, lines: list[bytes], uid: bool) -> None:
        for line in lines:
            if not uid and (m := re.match(rb"\* (\d+) EXPUNGE$", line)):
                gone = int(m.group(1))   # sequence numbers above it move down
                assert gone not in self.numbers, "REMOVEFROM must come before the EXPUNGE"
                self.numbers = [n - 1 if n > gone else n for n in self.numbers]
            if not line.startswith(b'* ESEARCH (TAG "%s")' % self.tag):
                continue
            for kind, payload in re.findall(rb"(ADDTO|REMOVEFROM) \(([^)]*)\)", line):
                words = payload.split()
                for position, numbers in zip(words[::2], words[1::2], strict=True):
                    self._update(kind, int(position), _expand(numbers))

    def _update(self, kind: bytes, position: int, numbers: list[int]) -> None:
        assert position >= 1, "SORT contexts give positions"
        if kind == b"ADDTO":
            assert position <= len(self.numbers) + 1, "ADDTO past the end of the result"
            self.numbers[position - 1:position - 1] = numbers
        else:
            assert self.numbers[position - 1:position - 1 + len(numbers)] == numbers
            del self.numbers[position - 1:position - 1 + len(numbers)]


def _expand(text: bytes) -> list[int]:
    out = []
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        a, b = int(low), int(high or low)
        out += list(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    return out


def _sorted_now(client: imaplib.IMAP4, tag: str, sort: str) -> list[int]:
    [line] = [x for x in _cmd(client, tag, sort)[:-1] if x.startswith(b"* SORT")]
    return [int(n) for n in line.split()[2:]]


SORTS = ["UID SORT (SUBJECT) UTF-8 UNSEEN", "SORT (REVERSE DATE) UTF-8 UNDELETED",
         "UID SORT (REVERSE SIZE SUBJECT) UTF-8 OR FLAGGED UID 3:6",
         'SORT (FROM REVERSE ARRIVAL) UTF-8 NOT SUBJECT "skip"']
STEPS = [("B", "STORE 2,5 +FLAGS (\\Seen)"), ("B", "STORE 3 +FLAGS (\\Flagged \\Deleted)"),
         ("A", "STORE 1 +FLAGS (\\Seen)"), ("B", "EXPUNGE"), ("B", "COPY 2,4 INBOX"),
         ("A", "STORE 1:* -FLAGS (\\Seen)"), ("deliver", "topic 5"),
         ("B", "STORE 2:4 +FLAGS (\\Deleted)"), ("A", "EXPUNGE"), ("deliver", "skip me"),
         ("B", "MOVE 1 Trash"), ("B", "STORE 1 +FLAGS (\\Flagged)"),
         ("B", "STORE 3:* +FLAGS (\\Seen)"),
         ("B", "STORE 1:2 +FLAGS (\\Seen) ; STORE 3:* -FLAGS (\\Seen)")]   # out and in at once


@pytest.mark.parametrize("merge_at", [_context_refresh.MERGE_AT, 1])
async def test_sort_updates_keep_the_client_current(gateway, merge_at, monkeypatch):
    """After each change (by this session, by another, by the POP3 fetcher) every client-side
    model of a SORT RETURN (UPDATE) result equals a fresh SORT of the same criteria; new members
    placed one by one, or (merge_at 1) merged by one sort."""
    monkeypatch.setattr(_context_refresh, "MERGE_AT", merge_at)
    for n in range(8):
        gateway.deliver(message(n, subject=f"topic {(n * 3) % 8}", sender=f"s{n % 3}@example.org"))

    def scenario() -> None:
        a, b = gateway.imaplib(), gateway.imaplib()
        assert _cmd(a, "a0", "SELECT INBOX")[-1].split()[1] == b"OK"
        _cmd(b, "b0", "SELECT INBOX")
        models = []
        for n, sort in enumerate(SORTS):
            head, _, rest = sort.partition("SORT ")
            lines = _cmd(a, f"u{n}", f"{head}SORT RETURN (UPDATE ALL) {rest}")
            [reply] = [x for x in lines if x.startswith(b"* ESEARCH")]
            match = re.search(rb" ALL (\S+)", reply)
            models.append(Model(f"u{n}", _expand(match.group(1)) if match else []))
            assert models[-1].numbers == _sorted_now(a, f"v{n}", sort)
        for n, (who, command) in enumerate(STEPS):
            if who == "deliver":
                gateway.deliver(message(100 + n, subject=command))
                lines = _wait_for_new_mail(a)
            elif who == "A":
                lines = _cmd(a, f"x{n}", command)
            else:
                for part in command.split(" ; "):
                    _cmd(b, f"x{n}", part)
                lines = _cmd(a, f"n{n}", "NOOP")
            for model, sort in zip(models, SORTS, strict=True):
                model.apply(lines, uid=sort.startswith("UID "))
                assert model.numbers == _sorted_now(a, f"r{n}", sort), (command, sort)
        a.logout()
        b.logout()

    await trio.to_thread.run_sync(scenario)


def _wait_for_new_mail(client: imaplib.IMAP4) -> list[bytes]:
    """NOOP until the fetcher's new message is announced; the lines of all those NOOPs."""
    seen: list[bytes] = []

    def arrived() -> bool:
        seen.extend(_cmd(client, "w", "NOOP"))
        return any(line.endswith(b" EXISTS") for line in seen)

    wait_for(arrived, "the delivered message to reach the session", timeout=30, interval=0.2)
    return seen


# ---- the limit, CANCELUPDATE, IDLE ------------------------------------------------------------------

async def test_noupdate_past_the_limit_and_cancelupdate(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store,
                            limits={"search_updates": 2})
    await gateway.start(nursery)

    def scenario() -> None:
        client = gateway.imaplib()
        for n in range(3):
            client.append("INBOX", None, None, message(n))
        _cmd(client, "s", "SELECT INBOX")
        assert _cmd(client, "c1", "UID SEARCH RETURN (UPDATE) ALL") == [
            b'* ESEARCH (TAG "c1") UID', b"c1 OK UID SEARCH completed."]
        assert _cmd(client, "c2", "SORT RETURN (UPDATE COUNT) (SUBJECT) UTF-8 ALL")[:-1] == [
            b'* ESEARCH (TAG "c2") COUNT 3']
        # RFC 5267 4.3.1: the answer, an untagged NO naming the tag, a tagged OK
        assert _cmd(client, "c3", "SEARCH RETURN (UPDATE COUNT) ALL") == [
            b'* ESEARCH (TAG "c3") COUNT 3', b'* NO [NOUPDATE "c3"] Too many contexts',
            b"c3 OK SEARCH completed."]
        lines = _append_inbox(client, "c4", 3)
        assert [x for x in lines if x.startswith(b"* ESEARCH")] == [
            b'* ESEARCH (TAG "c1") UID ADDTO (0 4)', b'* ESEARCH (TAG "c2") ADDTO (4 4)'], lines
        assert _cmd(client, "c5", 'CANCELUPDATE "c1"') == [b"c5 OK CANCELUPDATE completed."]
        assert _cmd(client, "c6", 'CANCELUPDATE "c1"') == [b"c6 NO Unknown tag."]
        assert _cmd(client, "c7", "CANCELUPDATE")[-1].startswith(b"c7 BAD ")
        assert _cmd(client, "c8", "SEARCH RETURN (UPDATE) DELETED") == [
            b'* ESEARCH (TAG "c8")', b"c8 OK SEARCH completed."]   # a slot is free again
        lines = _cmd(client, "c9", "STORE 1 +FLAGS (\\Deleted)")
        assert b'* ESEARCH (TAG "c8") ADDTO (0 1)' in lines
        assert _cmd(client, "c10", "UNSELECT")[-1].startswith(b"c10 OK")
        assert _cmd(client, "c11", 'CANCELUPDATE "c2"')[-1].startswith(b"c11 BAD ")
        client.logout()

    try:
        await trio.to_thread.run_sync(scenario)
    finally:
        await gateway.stop()


def _append_inbox(client: imaplib.IMAP4, tag: str, n: int) -> list[bytes]:
    body = message(n)
    return _cmd(client, tag, b"APPEND INBOX {%d+}\r\n" % len(body) + body)


async def test_updates_reach_an_idle_session(gateway):
    """During IDLE (RFC 5267 4.3.2): ADDTO after the EXISTS of mail the fetcher brings in,
    REMOVEFROM when another session sets \\Seen, REMOVEFROM before another session's EXPUNGE."""
    gateway.deliver(message(1))

    def read_until(client: imaplib.IMAP4, last: bytes) -> list[bytes]:
        lines = []   # bounded by the client's socket timeout
        while not lines or lines[-1] != last:
            lines.append(client.readline().rstrip(b"\r\n"))
        return lines

    def scenario() -> None:
        watcher, other = gateway.imaplib(), gateway.imaplib()
        _cmd(watcher, "w1", "SELECT INBOX")
        _cmd(other, "o1", "SELECT INBOX")
        assert _cmd(watcher, "w2", "UID SEARCH RETURN (UPDATE ALL) UNSEEN")[0] == \
            b'* ESEARCH (TAG "w2") UID ALL 1'
        watcher.send(b"w3 IDLE\r\n")
        assert watcher.readline().startswith(b"+ ")
        gateway.deliver(message(2))
        assert read_until(watcher, b'* ESEARCH (TAG "w2") UID ADDTO (0 2)')[0] == b"* 2 EXISTS"
        _cmd(other, "o2", "STORE 1 +FLAGS (\\Seen \\Deleted)")
        read_until(watcher, b'* ESEARCH (TAG "w2") UID REMOVEFROM (0 1)')
        _cmd(other, "o3", "STORE 2 +FLAGS (\\Deleted)")
        _cmd(other, "o4", "EXPUNGE")
        assert read_until(watcher, b"* 1 EXPUNGE")[-3:] == [
            b'* ESEARCH (TAG "w2") UID REMOVEFROM (0 2)', b"* 2 EXPUNGE", b"* 1 EXPUNGE"]
        watcher.send(b"DONE\r\n")
        assert read_until(watcher, b"w3 OK IDLE completed.")
        watcher.logout()
        other.logout()

    await trio.to_thread.run_sync(scenario)


async def test_webmail_style_session_with_live_results(gateway):
    """What a webmail keeps on screen (RFC 5267 A.1, A.4): the unseen counter from
    `SEARCH RETURN (UPDATE COUNT) UNSEEN` and page 1 of a date-sorted list from
    `UID SORT RETURN (UPDATE COUNT PARTIAL 1:3)`, kept current from ADDTO/REMOVEFROM alone while
    another device reads mail, new mail arrives through the fetcher and the user moves the top
    message to Trash; after each step both equal what fresh commands answer."""
    for n in range(6):
        gateway.deliver(message(n, subject=f"news {n}"))

    def scenario() -> None:
        web, phone = gateway.imaplib(), gateway.imaplib()
        caps = _cmd(web, "w0", "CAPABILITY")[0].split()
        assert b"CONTEXT=SEARCH" in caps and b"CONTEXT=SORT" in caps and b"ESORT" in caps
        _cmd(web, "w1", "SELECT INBOX")
        _cmd(phone, "p1", "SELECT INBOX")
        unseen = int(_cmd(web, "cnt", "SEARCH RETURN (UPDATE COUNT) UNSEEN")[0].split()[-1])
        page, total = _page(web, "pg", "UPDATE COUNT PARTIAL 1:3")
        assert (unseen, page, total) == (6, [6, 5, 4], 6)
        steps = [(phone, "UID STORE 5,2 +FLAGS (\\Seen)"), (None, "news 6"),
                 (web, "UID MOVE 7 Trash"), (web, "UID STORE 6 +FLAGS (\\Flagged)"),
                 (phone, "UID STORE 2 -FLAGS (\\Seen)"), (phone, "UID MOVE 4 Trash")]
        for n, (who, command) in enumerate(steps):
            if who is None:
                gateway.deliver(message(50, subject=command, body="new"))
                lines = _wait_for_new_mail(web)
            else:
                lines = _cmd(who, f"x{n}", command)
                if who is phone:
                    lines = _cmd(web, f"n{n}", "NOOP")
            for kind, _position, uids in _updates(lines, b"cnt"):
                unseen += len(uids) if kind == b"ADDTO" else -len(uids)
            for kind, position, uids in _updates(lines, b"pg"):
                total += len(uids) if kind == b"ADDTO" else -len(uids)
                if kind == b"ADDTO" and position <= 3:
                    page = (page[:position - 1] + uids + page[position - 1:])[:3]
                elif kind == b"REMOVEFROM" and position <= 3:
                    del page[position - 1:position - 1 + len(uids)]
            if len(page) < min(3, total):   # an entry left page 1: fetch it again
                page, _ = _page(web, f"re{n}", "PARTIAL 1:3")
            fresh_unseen = int(_cmd(web, f"u{n}", "SEARCH RETURN (COUNT) UNSEEN")[0].split()[-1])
            assert (unseen, page, total) == (fresh_unseen, *_page(web, f"f{n}", "COUNT PARTIAL 1:3"))
        web.logout()
        phone.logout()

    await trio.to_thread.run_sync(scenario)


def _page(client: imaplib.IMAP4, tag: str, options: str) -> tuple[list[int], int]:
    lines = _cmd(client, tag, f"UID SORT RETURN ({options}) (REVERSE DATE) UTF-8 UNDELETED")
    [line] = [x for x in lines if x.startswith(b"* ESEARCH")]
    window = re.search(rb"PARTIAL \(\S+ (\S+)\)", line).group(1)
    count = re.search(rb"COUNT (\d+)", line)
    return (_expand(window) if window != b"NIL" else []), int(count.group(1)) if count else -1


def _updates(lines: list[bytes], tag: bytes):
    """(kind, position, numbers) of every ADDTO/REMOVEFROM pair for `tag`, in order."""
    for line in lines:
        if line.startswith(b'* ESEARCH (TAG "%s")' % tag):
            for kind, payload in re.findall(rb"(ADDTO|REMOVEFROM) \(([^)]*)\)", line):
                words = payload.split()
                for position, numbers in zip(words[::2], words[1::2], strict=True):
                    yield kind, int(position), _expand(numbers)


def test_updates_from_another_replica(proxy_factory, dovecot, pg_dsn):
    """Two gateway processes on one PostgreSQL store: changes made through one replica (flags,
    EXPUNGE) and mail its fetcher (or the other's) ingests update a context on the other, live
    in IDLE (the change feed reaches the view as local changes do)."""
    name, password = dovecot.add_user()
    for n in range(3):
        dovecot.deliver(name, message(n, subject=f"topic {3 - n}"))
    a = proxy_factory(gateway_config(dovecot, pg_dsn))
    b = proxy_factory(gateway_config(dovecot, pg_dsn))
    on_a, on_b = Raw(a.port("gw"), name, password), Raw(b.port("gw"), name, password)
    assert b"* 3 EXISTS" in on_a.cmd("SELECT INBOX")[0]
    assert b"* 3 EXISTS" in on_b.cmd("SELECT INBOX")[0]
    assert on_b.cmd("UID SEARCH RETURN (UPDATE) FLAGGED") == (
        [b'* ESEARCH (TAG "t3") UID'], b"t3 OK UID SEARCH completed.")
    assert on_b.cmd("UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNDELETED")[0] == [
        b'* ESEARCH (TAG "t4") UID ALL 3,2,1']
    idle = Idle(on_b)
    assert on_a.cmd("STORE 2 +FLAGS.SILENT (\\Flagged)")[1].split()[1] == b"OK"
    assert idle.until(rb'TAG "t3"') == b'* ESEARCH (TAG "t3") UID ADDTO (0 2)'
    assert on_a.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)")[1].split()[1] == b"OK"
    assert idle.until(rb'TAG "t4"') == b'* ESEARCH (TAG "t4") UID REMOVEFROM (1 3)'
    dovecot.deliver(name, message(3, subject="topic 0"))
    assert idle.until(rb"EXISTS") == b"* 4 EXISTS"
    assert idle.until(rb'TAG "t4"') == b'* ESEARCH (TAG "t4") UID ADDTO (1 4)'
    assert on_a.cmd("EXPUNGE")[1].split()[1] == b"OK"
    assert idle.until(rb"EXPUNGE") == b"* 3 EXPUNGE"   # no REMOVEFROM: 3 had left both
    idle.done()
    on_a.close()
    on_b.close()
