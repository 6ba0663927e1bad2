"""CONDSTORE and QRESYNC (RFC 7162) over a raw socket: a client offline during changes resyncs
with SELECT (QRESYNC ...) and gets exactly the VANISHED and FETCH lines it needs."""

from __future__ import annotations

import re
import socket

import trio

from proxy.gateway.imapd.hub import Hub

from .conftest import message

run = trio.to_thread.run_sync


class Raw:
    """A minimal IMAP client: `cmd("SELECT INBOX")` -> (untagged lines, tagged line)."""

    def __init__(self, port: int, user: str, password: str):
        # a bound for a hung server, generous: 200 of these log in at once on a loaded CI machine
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")
        self.n = 0
        self.file.readline()
        assert self.cmd(f'LOGIN "{user}" "{password}"')[1].split()[1] == b"OK"

    def cmd(self, text: str) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.file.readline().rstrip(b"\r\n")
            if line.startswith(tag + b" "):
                return lines, line
            lines.append(line)

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.sock.close()


def _highest(lines: list[bytes]) -> int:
    return int(next(re.search(rb"HIGHESTMODSEQ (\d+)", line).group(1) for line in lines
                    if b"HIGHESTMODSEQ" in line))


async def test_qresync_offline_client_gets_exactly_what_changed(gateway):
    for n in range(6):
        gateway.deliver(message(n))

    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        caps = a.cmd("CAPABILITY")[0][0]
        assert b"CONDSTORE" in caps and b"QRESYNC" in caps
        assert a.cmd("ENABLE QRESYNC")[0] == [b"* ENABLED QRESYNC"]
        lines, done = a.cmd("SELECT INBOX")
        assert b"OK" in done
        uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b"\n".join(lines)).group(1))
        modseq = _highest(lines)
        a.close()   # offline from here

        b = Raw(gateway.port, gateway.user, gateway.password)
        b.cmd("SELECT INBOX")
        b.cmd("UID STORE 2 +FLAGS (\\Flagged)")
        b.cmd("UID STORE 4,5 +FLAGS (\\Deleted)")
        b.cmd("UID EXPUNGE 4,5")
        b.cmd("UID STORE 1 +FLAGS (\\Seen)")
        b.close()

        c = Raw(gateway.port, gateway.user, gateway.password)
        c.cmd("ENABLE QRESYNC")
        lines, done = c.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 1:6))")
        assert b"OK" in done, done
        vanished = [line for line in lines if b"VANISHED" in line]
        fetches = [line for line in lines if b" FETCH " in line]
        assert vanished == [b"* VANISHED (EARLIER) 4:5"], lines
        assert len(fetches) == 2, lines
        assert re.match(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", fetches[0]), fetches
        assert re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", fetches[1]), fetches
        assert b"* 4 EXISTS" in lines
        new_modseq = _highest(lines)
        assert new_modseq > modseq
        # Nothing changed since: nothing to send but the usual SELECT lines.
        lines, _ = c.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {new_modseq}))")
        assert not [line for line in lines if b"VANISHED" in line or b" FETCH " in line], lines
        # A wrong UIDVALIDITY: a plain SELECT.
        lines, _ = c.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity + 1} {modseq}))")
        assert not [line for line in lines if b"VANISHED" in line or b" FETCH " in line], lines
        # FETCH CHANGEDSINCE with VANISHED (3.2.6)
        lines, done = c.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        assert b"OK" in done
        assert lines[0] == b"* VANISHED (EARLIER) 4:5", lines
        assert len([line for line in lines if b"FETCH" in line]) == 2
        assert all(b"MODSEQ" in line for line in lines[1:])
        c.close()
    await run(scenario)


async def test_condstore_store_unchangedsince_search_status_and_vanished(gateway):
    for n in range(3):
        gateway.deliver(message(n))

    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        lines, _ = a.cmd("SELECT INBOX (CONDSTORE)")
        start = _highest(lines)
        lines, done = a.cmd("FETCH 1:* (UID MODSEQ)")
        assert all(b"MODSEQ (" in line for line in lines) and len(lines) == 3
        lines, done = a.cmd(f"STORE 1:2 (UNCHANGEDSINCE {start}) +FLAGS (\\Answered)")
        assert b"OK" in done and b"MODIFIED" not in done
        assert all(b"MODSEQ (" in line for line in lines) and len(lines) == 2, lines
        lines, done = a.cmd(f"STORE 1:3 (UNCHANGEDSINCE {start}) +FLAGS.SILENT (\\Flagged)")
        assert b"[MODIFIED 1:2]" in done, done       # 1 and 2 changed after `start`
        # RFC 7162 3.1: once CONDSTORE is on, every untagged FETCH carries UID and MODSEQ
        assert len(lines) == 1 and re.match(rb"\* 3 FETCH \(UID 3 MODSEQ \(\d+\)\)", lines[0]), lines
        lines, _ = a.cmd(f"SEARCH MODSEQ {start + 1}")
        assert re.match(rb"\* SEARCH 1 2 3 \(MODSEQ \d+\)", lines[0]), lines
        lines, _ = a.cmd("STATUS Sent (HIGHESTMODSEQ MESSAGES)")
        assert re.match(rb'\* STATUS "?Sent"? \(HIGHESTMODSEQ \d+ MESSAGES 0\)', lines[0]), lines
        a.close()

        q = Raw(gateway.port, gateway.user, gateway.password)
        q.cmd("ENABLE QRESYNC")
        q.cmd("SELECT INBOX")
        other = Raw(gateway.port, gateway.user, gateway.password)
        other.cmd("SELECT INBOX")
        other.cmd("STORE 2 +FLAGS (\\Deleted)")
        other.cmd("EXPUNGE")
        lines, _ = q.cmd("NOOP")   # another session's expunge: VANISHED, not EXPUNGE (3.2.10)
        assert b"* VANISHED 2" in lines, lines
        assert not any(line.endswith(b"EXPUNGE") for line in lines)
        lines, _ = q.cmd("STORE 1 +FLAGS (\\Deleted)")
        assert re.match(rb"\* 1 FETCH \(UID 1 FLAGS \(.*\) MODSEQ \(\d+\)\)", lines[0]), lines
        lines, _ = q.cmd("EXPUNGE")
        assert lines == [b"* VANISHED 1"], lines
        other.close()
        q.close()
    await run(scenario)


async def test_modified_tells_the_stored_modseq_before_the_change_is_published(gateway,
                                                                               monkeypatch):
    """RFC 7162 3.1.3, the stress mix's "[MODIFIED] but MODSEQ unchanged": session B's STORE
    has committed but not yet published its change (on PostgreSQL B may hear of its COMMIT
    after others already see it). Session A's STORE (UNCHANGEDSINCE) fails on it: A is told
    the stored flags and MODSEQ with the [MODIFIED], so its NOOP and FETCH MODSEQ agree; B's
    late publication is then no news to A."""
    gateway.deliver(message(1))
    held: list = []
    publish = Hub.flags

    def held_flags(self, mailbox_id, updates, origin=None):   # B's publication, held
        held.append((self, mailbox_id, list(updates), origin))

    def before(a, b):
        lines, _ = a.cmd("SELECT INBOX (CONDSTORE)")
        b.cmd("SELECT INBOX")
        return _highest(lines)

    a, b = await run(lambda: [Raw(gateway.port, gateway.user, gateway.password) for _ in 'ab'])
    start = await run(before, a, b)
    monkeypatch.setattr(Hub, "flags", held_flags)
    assert (await run(b.cmd, "STORE 1 +FLAGS (\\Seen)"))[1] == b"t3 OK STORE completed."
    monkeypatch.setattr(Hub, "flags", publish)
    assert len(held) == 1
    lines, done = await run(a.cmd, f"UID STORE 1 (UNCHANGEDSINCE {start}) +FLAGS (\\Flagged)")
    assert done == b"t3 OK [MODIFIED 1] Conditional STORE failed for some messages."
    assert lines == [b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen) MODSEQ (%d))" % (start + 1)]
    assert await run(a.cmd, "NOOP") == ([], b"t4 OK NOOP completed.")
    assert await run(a.cmd, "UID FETCH 1 (MODSEQ)") == (
        [b"* 1 FETCH (UID 1 MODSEQ (%d))" % (start + 1)], b"t5 OK UID FETCH completed.")
    publish(*held[0])   # B's change reaches A's view late: already told, nothing new
    assert await run(a.cmd, "NOOP") == ([], b"t6 OK NOOP completed.")
    await run(lambda: (a.close(), b.close()))
