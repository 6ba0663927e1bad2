"""Three imapclient sessions on one gateway account (issue 8): what one session does, the others
see, at the moments RFC 3501 allows.

* MOVE (RFC 6851) between folders: EXPUNGE (VANISHED with QRESYNC, RFC 7162 3.2.10) in the
  source for sessions that have it selected, EXISTS in the destination for sessions that have
  that one selected; after NOOP and live during IDLE.
* EXPUNGE by another session (RFC 3501 7.4.1): never sent during FETCH, STORE or SEARCH
  (non-UID), but at the next NOOP/IDLE, and sequence numbers stay consistent until then.
* STORE in one session: untagged FETCH FLAGS in the others after NOOP and live during IDLE.
* EXAMINE: PERMANENTFLAGS () (RFC 3501 6.3.2), SELECT: PERMANENTFLAGS with \\*.

Untagged responses are checked on the wire: `raw()` sends a command on imapclient's socket and
returns every line up to the tagged one, so nothing the client library would drop is missed.
"""

from __future__ import annotations

import itertools
import re
import time

import imapclient
import trio
from gateway_mime import wire

from support.polling import TIMEOUT

from .conftest import message

run = trio.to_thread.run_sync
_tags = itertools.count(1)


def raw(client: imapclient.IMAPClient, command: str) -> tuple[list[bytes], bytes]:
    """(untagged responses, tagged response) of `command`, exactly as sent."""
    imap = client._imap
    tag = b"v%d" % next(_tags)
    imap.send(tag + b" " + command.encode() + b"\r\n")
    replies = wire.read_response(imap.readline, imap.read, tag)
    return [r.rstrip(b"\r\n") for r in replies[:-1]], replies[-1].rstrip(b"\r\n")


def ok(client: imapclient.IMAPClient, command: str) -> list[bytes]:
    lines, done = raw(client, command)
    assert done.split()[1] == b"OK", (command, done)
    return lines


def idle_until(client: imapclient.IMAPClient, predicate, timeout: float = TIMEOUT) -> list:
    """Responses received in IDLE until `predicate(responses)` holds (fails after `timeout`: a
    bound only a broken build reaches; the gateway runs in this process, so a loaded machine
    delays its announcement and this wait together)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not predicate(got):
        left = deadline - time.monotonic()
        assert left > 0, f"not received in IDLE within {timeout}s: {got}"
        got += client.idle_check(timeout=left)
    return got


def kinds(lines: list[bytes]) -> list[bytes]:
    """`* 3 EXPUNGE` -> b"3 EXPUNGE"; `* 2 FETCH (...)` -> b"2 FETCH"; `* VANISHED 4` kept whole."""
    out = []
    for line in lines:
        words = line.split(b" ")
        if words[1] == b"VANISHED":
            out.append(b" ".join(words[1:]))
        elif len(words) > 2 and words[2] in (b"EXPUNGE", b"EXISTS", b"RECENT", b"FETCH"):
            out.append(words[1] + b" " + words[2])
    return out


def message_ids(client: imapclient.IMAPClient, folder: str) -> list[bytes]:
    client.select_folder(folder, readonly=True)
    uids = client.search(["ALL"])
    data = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
    return [v[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].strip() for _, v in sorted(data.items())]


def _sessions(gateway, n: int = 3) -> list[imapclient.IMAPClient]:
    return [gateway.imapclient() for _ in range(n)]


async def test_move_seen_by_all_after_noop_and_in_idle(gateway):
    for n in range(8):
        gateway.deliver(message(n))

    def scenario():
        a, b, c = _sessions(gateway)
        for s in (a, b):
            s.select_folder("INBOX")
        c.select_folder("Archive")
        # -- after NOOP: a moves UID 2 (seq 2) to Archive
        lines = ok(a, "UID MOVE 2 Archive")
        assert kinds(lines) == [b"2 EXPUNGE"], lines
        assert any(b"COPYUID" in line for line in lines), lines
        assert kinds(ok(b, "NOOP")) == [b"2 EXPUNGE"]
        assert kinds(ok(c, "NOOP")) == [b"1 EXISTS", b"1 RECENT"]
        assert kinds(ok(b, "NOOP")) == [] and kinds(ok(c, "NOOP")) == []   # told once
        # -- live in IDLE: a moves seq 3..4 (UIDs 4, 5)
        b.idle()
        c.idle()
        ok(a, "MOVE 3:4 Archive")
        got_b = idle_until(b, lambda r: sum(x[1:] == (b"EXPUNGE",) for x in r) >= 2)
        got_c = idle_until(c, lambda r: (3, b"EXISTS") in r)
        assert [x for x in got_b if x[1:] == (b"EXPUNGE",)] == [(4, b"EXPUNGE"), (3, b"EXPUNGE")] \
            or [x for x in got_b if x[1:] == (b"EXPUNGE",)] == [(3, b"EXPUNGE"), (3, b"EXPUNGE")], got_b
        b.idle_done()
        c.idle_done()
        # -- QRESYNC: VANISHED instead of EXPUNGE in the source (c moves over to INBOX)
        c.unselect_folder()
        assert c.enable("QRESYNC") == [b"QRESYNC"]
        c.select_folder("INBOX")
        b.select_folder("Archive")
        ok(a, "UID MOVE 1 Archive")
        assert kinds(ok(c, "NOOP")) == [b"VANISHED 1"]
        assert kinds(ok(b, "NOOP")) == [b"4 EXISTS", b"1 RECENT"]
        c.idle()
        b.idle()
        ok(a, "UID MOVE 6 Archive")
        got_c = idle_until(c, lambda r: any(x[0] == b"VANISHED" for x in r))
        assert [x for x in got_c if x[0] == b"VANISHED"] == [(b"VANISHED", 6)], got_c
        idle_until(b, lambda r: (5, b"EXISTS") in r)
        c.idle_done()
        b.idle_done()
        # every session's view equals a fresh SELECT; nothing lost or duplicated
        inbox = [s.search(["ALL"]) for s in (a, c)]
        archive = b.search(["ALL"])
        fresh = gateway.imapclient()
        fresh.select_folder("INBOX", readonly=True)
        assert inbox == [fresh.search(["ALL"])] * 2 == [[3, 7, 8]] * 2
        fresh.select_folder("Archive", readonly=True)
        assert archive == fresh.search(["ALL"]) and len(archive) == 5
        assert sorted(message_ids(fresh, "INBOX") + message_ids(fresh, "Archive")) == \
            sorted(b"Message-ID: <m%d@example.org>" % n for n in range(8))
        for s in (a, b, c, fresh):
            s.logout()

    await run(scenario)


async def test_expunge_not_during_fetch_store_search(gateway):
    for n in range(6):
        gateway.deliver(message(n))

    def scenario():
        a, b, c = _sessions(gateway)
        for s in (a, b, c):
            s.select_folder("INBOX")
        c.idle()
        ok(a, "STORE 2 +FLAGS.SILENT (\\Deleted)")
        assert kinds(ok(a, "EXPUNGE")) == [b"2 EXPUNGE"]
        # c, in IDLE, is told at once (IDLE may carry EXPUNGE, RFC 2177)
        got = idle_until(c, lambda r: (2, b"EXPUNGE") in r)
        assert got.count((2, b"EXPUNGE")) == 1, got
        c.idle_done()
        # b: FETCH, STORE and SEARCH (non-UID) must not announce it; numbers stay as b knows them
        lines = ok(b, "FETCH 1:* (FLAGS)")
        # the six answers, then (allowed after any command) a's \Deleted as a FETCH FLAGS
        assert kinds(lines)[:6] == [b"%d FETCH" % n for n in range(1, 7)], b"\n".join(lines)
        assert not any(b"EXPUNGE" in line for line in lines), lines
        lines, done = raw(b, "FETCH 2 (BODY.PEEK[])")   # its body is gone (RFC 2180 4.1.3)
        assert not any(b"EXPUNGE" in line for line in lines)
        assert done.split()[1] in (b"OK", b"NO"), done
        lines = ok(b, "STORE 3 +FLAGS (\\Flagged)")
        assert kinds(lines) == [b"3 FETCH"] and b"\\Flagged" in lines[0], lines
        assert ok(b, "FETCH 3 (UID)") == [b"* 3 FETCH (UID 3)"]
        lines = ok(b, "SEARCH FLAGGED")
        assert lines == [b"* SEARCH 3"], lines
        lines = ok(b, "SEARCH ALL")
        assert not any(b"EXPUNGE" in line for line in lines), lines
        # a's own expunge is announced at b's next NOOP; then the numbers shift
        lines = ok(b, "NOOP")
        assert kinds(lines) == [b"2 EXPUNGE"], lines
        assert ok(b, "SEARCH FLAGGED") == [b"* SEARCH 2"]
        assert ok(b, "FETCH 2 (UID)") == [b"* 2 FETCH (UID 3)"]
        assert ok(b, "SEARCH ALL") == [b"* SEARCH 1 2 3 4 5"]
        # c learns b's STORE at its next command that may carry it (here NOOP)
        lines = ok(c, "NOOP")
        assert kinds(lines) == [b"2 FETCH"] and b"\\Flagged" in lines[0], lines
        # an expunge while b is in a STORE: the STORE reply has no EXPUNGE, the next NOOP has
        ok(a, "STORE 1 +FLAGS.SILENT (\\Deleted)")
        ok(a, "EXPUNGE")
        lines = ok(b, "STORE 1:* -FLAGS.SILENT (\\Flagged)")
        assert not any(b"EXPUNGE" in line for line in lines), lines
        assert kinds(ok(b, "NOOP")) == [b"1 EXPUNGE"]
        for s in (a, b, c):
            s.noop()
            assert s.search(["ALL"]) == [3, 4, 5, 6]   # UIDs
        for s in (a, b, c):
            s.logout()

    await run(scenario)


async def test_store_seen_after_noop_and_live_in_idle(gateway):
    for n in range(4):
        gateway.deliver(message(n))

    def scenario():
        a, b, c = _sessions(gateway)
        for s in (a, b, c):
            s.select_folder("INBOX")
        c.idle()
        ok(a, "STORE 2 +FLAGS (\\Seen $Work)")
        lines = ok(b, "NOOP")
        assert kinds(lines) == [b"2 FETCH"], lines
        # $Work is a new keyword: FLAGS and PERMANENTFLAGS come first (RFC 3501 7.2.6, issue 13)
        assert lines[:2] == [b"* FLAGS ($Work \\Answered \\Deleted \\Draft \\Flagged \\Seen)",
                             b"* OK [PERMANENTFLAGS ($Work \\* \\Answered \\Deleted \\Draft "
                             b"\\Flagged \\Seen)] Flags permitted."], lines
        assert re.search(rb"FLAGS \((\\Seen \$Work|\$Work \\Seen)\)", lines[2]), lines
        got = idle_until(c, lambda r: any(x[1] == b"FETCH" for x in r))
        fetched = [x for x in got if x[1] == b"FETCH"]
        assert len(fetched) == 1 and fetched[0][0] == 2, got
        items = dict(zip(fetched[0][2][::2], fetched[0][2][1::2], strict=True))
        assert set(items[b"FLAGS"]) == {b"\\Seen", b"$Work"}
        # b's change reaches a (after NOOP) and c (still idling)
        ok(b, "STORE 2 -FLAGS (\\Seen)")
        got = idle_until(c, lambda r: any(x[1] == b"FETCH" for x in r))
        assert dict(zip(got[0][2][::2], got[0][2][1::2], strict=True))[b"FLAGS"] == (b"$Work",), got
        c.idle_done()
        lines = ok(a, "NOOP")
        assert kinds(lines) == [b"2 FETCH"] and b"\\Seen" not in lines[0], lines
        # the session that made the change is not told twice
        assert kinds(ok(b, "NOOP")) == []
        for s in (a, b, c):
            s.logout()

    await run(scenario)


async def test_examine_permanentflags_empty_select_has_star(gateway):
    gateway.deliver(message(0))

    def scenario():
        c = gateway.imapclient()
        lines = ok(c, "EXAMINE INBOX")
        assert any(line.startswith(b"* OK [PERMANENTFLAGS ()]") for line in lines), lines
        assert any(line.startswith(b"* FLAGS (") for line in lines), lines
        lines, done = raw(c, "STORE 1 +FLAGS (\\Seen)")
        assert done.split()[1] == b"NO", done
        lines = ok(c, "SELECT INBOX")
        permanent = [line for line in lines if b"PERMANENTFLAGS" in line]
        assert len(permanent) == 1 and b"\\*" in permanent[0] and b"\\Seen" in permanent[0], lines
        c.logout()

    await run(scenario)


async def test_expunge_held_back_by_fetch_is_sent_when_idle_starts(gateway):
    """An expunge held back during FETCH (7.4.1) goes out as soon as the client IDLEs (RFC 2177),
    not only when some later change wakes the session."""
    for n in range(3):
        gateway.deliver(message(n))

    def scenario():
        a, b = _sessions(gateway, 2)
        for s in (a, b):
            s.select_folder("INBOX")
        ok(a, "STORE 1 +FLAGS.SILENT (\\Deleted)")
        ok(a, "EXPUNGE")
        assert not any(b"EXPUNGE" in line for line in ok(b, "FETCH 1:* (UID)"))
        # raw IDLE: the EXPUNGE may share a packet with "+ idling", which imapclient's
        # idle_check() (select() on the socket after a buffered readline) would not see
        imap = b._imap
        imap.send(b"i1 IDLE\r\n")
        imap.sock.settimeout(30)   # a bound for a hang: the EXPUNGE comes with no other change
        assert imap.readline().startswith(b"+ ")
        assert imap.readline() == b"* 1 EXPUNGE\r\n"   # at once, no other change needed
        imap.send(b"DONE\r\n")
        assert imap.readline().startswith(b"i1 OK")
        imap.sock.settimeout(20)
        assert b.search(["ALL"]) == [2, 3]
        a.logout()
        b.logout()

    await run(scenario)


async def test_silent_store_still_sends_flags_another_session_changed(gateway):
    """RFC 3501 6.4.6: with .SILENT too, a flag change by another session that the STORE comes
    across is sent. The STORE reads the message's newest flags, so the other session's change
    is no news at the next NOOP any more: unless the STORE tells it, this client never hears
    of \\Seen (and with CONDSTORE keeps an old MODSEQ)."""
    for n in range(2):
        gateway.deliver(message(n))

    def scenario():
        a, b = _sessions(gateway, 2)
        for s in (a, b):
            s.select_folder("INBOX")
        ok(a, "STORE 1 +FLAGS (\\Seen)")
        assert ok(b, "STORE 1 +FLAGS.SILENT (\\Flagged)") == [
            b"* 1 FETCH (FLAGS (\\Flagged \\Seen))"]
        # message 2 ends as this client expects (+\Seen): no flags to tell
        ok(a, "STORE 2 +FLAGS (\\Seen)")
        assert ok(b, "STORE 2 +FLAGS.SILENT (\\Seen)") == []
        assert ok(b, "NOOP") == []   # both changes were told (or needed no telling)
        assert ok(b, "FETCH 1:2 (FLAGS)") == [b"* 1 FETCH (FLAGS (\\Flagged \\Seen))",
                                              b"* 2 FETCH (FLAGS (\\Seen))"]

    await run(scenario)
