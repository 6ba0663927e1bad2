"""More of what real clients do, for the stress tester (run.py): COPY and MOVE between mailboxes
(RFC 6851), SELECT/EXAMINE switches, mailboxes created, renamed and deleted while another
session may have them selected, QRESYNC reconnects (RFC 7162 3.2.5), STORE UNCHANGEDSINCE
(3.1.3), large APPENDs and mail delivered to the POP3 upstream (ingest) during all of it.

Every step starts and ends with INBOX selected, so checkpoints compare INBOX pictures. Steps
that visit another mailbox give the session a new `View` for it (the same checks apply there);
UIDs are keyed by UIDVALIDITY in the shared record, so COPYUID/APPENDUID into any mailbox and
the bodies fetched there are checked against what was appended.

A scratch mailbox may be deleted or renamed by one session while another has it selected: the
selecting session then may get NO or `* BYE` (Dovecot and the gateway both disconnect a session
whose selected mailbox was deleted); after a BYE it logs in again (`reopen`).
"""

from __future__ import annotations

import time

from support.polling import TIMEOUT

from .model import Slot
from .wire import Bye, seqset

ARCHIVE = b"Archive"
SCRATCH = [b"Scratch1", b"Scratch2", b"Scratch3"]
OK_OR_NO = (b"OK", b"NO")
# RFC 2180 4.4.1: COPY/MOVE naming a message another session expunged may fail (Dovecot does)
COPIED = (b"OK", b"NO [EXPUNGEISSUED]")
MAX_INBOX_FOR_COPY = 40          # COPY into INBOX grows it: only below this size
BIG_APPEND_BYTES = (1 << 20, 3 << 20)
# the lag bound only a broken build reaches (the wait ends when the change arrives): at 10 s a
# replica process descheduled that long on a loaded machine would read as a wrong MODSEQ
REPLICA_LAG_POLL_S, REPLICA_LAG_BOUND_S = 0.05, TIMEOUT


def prepare(session) -> None:
    """Once per session before the first round: Archive exists (NO when another made it)."""
    session.run([b"CREATE " + ARCHIVE], OK_OR_NO)


def copy(session) -> None:
    n = len(session.view.slots)
    dest = ARCHIVE if n >= MAX_INBOX_FOR_COPY or session.rng.random() < 0.6 else b"INBOX"
    if session.rng.random() < 0.5:
        session.run([b"UID COPY " + _some_uids(session) + b" " + dest], COPIED)
    else:
        session.run([b"COPY " + session.seq_range() + b" " + dest], COPIED)


def move(session) -> None:
    """RFC 6851: MOVE answers with COPYUID in an untagged OK, then EXPUNGE (or VANISHED)."""
    if session.rng.random() < 0.5:
        session.run([b"UID MOVE " + _some_uids(session) + b" " + ARCHIVE], COPIED)
    else:
        session.run([b"MOVE " + session.seq_range() + b" " + ARCHIVE], COPIED)


def visit(session) -> None:
    """SELECT or EXAMINE Archive, a few commands there (moving some mail back, CLOSE), back to
    INBOX."""
    rng = session.rng
    read_only = rng.random() < 0.4
    session.switch(b"EXAMINE" if read_only else b"SELECT", ARCHIVE)
    for _ in range(rng.randint(1, 3)):
        if not session.view.slots:
            break
        choice = rng.choice(["fetch", "idle"] if read_only else
                            ["fetch", "store", "back", "expunge", "idle", "close"])
        if choice == "close":   # RFC 3501 6.4.2: a silent expunge, nothing selected after it
            session.run([b"UID STORE " + _some_uids(session) + b" +FLAGS.SILENT (\\Deleted)",
                         b"CLOSE"])
            break
        if choice == "fetch":
            session.ok(session.fetch_command(rng.random() < 0.5))
        elif choice == "store":
            session.ok(session.store_command(True))
        elif choice == "back":
            target = b"1:*" if rng.random() < 0.2 else _some_uids(session)
            session.run([b"UID MOVE " + target + b" INBOX"], COPIED)
        elif choice == "expunge":
            session.expunge()
        else:
            session.idle()
        session.sync()
    session.switch(b"SELECT", b"INBOX")


def scratch(session) -> None:
    """Create, fill, rename, delete or sit in one of a few scratch mailboxes the sessions share
    (sitting: FETCH, IDLE, MOVE/COPY out, EXPUNGE, while another session may delete it)."""
    rng = session.rng
    name, other = rng.sample(SCRATCH, 2)
    kind = rng.choice(["create", "create", "fill", "fill", "rename", "delete", "sit", "sit"])
    if kind == "create":
        session.run([b"CREATE " + name], OK_OR_NO)
    elif kind == "delete":
        session.run([b"DELETE " + name], OK_OR_NO)
    elif kind == "rename":
        session.run([b"RENAME " + name + b" " + other], OK_OR_NO)
    elif kind == "fill":
        if session.view.slots and rng.random() < 0.5:
            session.run([b"COPY " + session.seq_range() + b" " + name], OK_OR_NO)   # TRYCREATE
        else:
            session.append(name, OK_OR_NO)
    else:
        _sit(session, name)


def _sit(session, name: bytes) -> None:
    session.bye_ok = True
    try:
        if session.switch(b"SELECT", name, allow=OK_OR_NO) == b"OK":
            for _ in range(session.rng.randint(1, 3)):
                choice = session.rng.random() if session.view.slots else 1.0
                if choice < 0.3:
                    session.run([session.fetch_command(True)], OK_OR_NO)
                elif choice < 0.6:   # out of a mailbox another session may be deleting
                    move = session.rng.random() < 0.6   # a COPY into INBOX would grow it
                    dest = session.rng.choice([ARCHIVE, b"INBOX"]) if move else ARCHIVE
                    verb = b"UID MOVE " if move else b"UID COPY "
                    session.run([verb + _some_uids(session) + b" " + dest], OK_OR_NO)
                elif choice < 0.75:
                    session.run([b"UID STORE " + _some_uids(session) + b" +FLAGS (\\Deleted)",
                                 b"EXPUNGE"], OK_OR_NO)
                else:
                    session.idle()
        # (leaving it may be what finds it deleted: Dovecot answers that SELECT with its BYE)
        session.switch(b"SELECT", b"INBOX")
    except Bye:
        session.counts["scratch bye"] += 1   # how often a selected scratch mailbox went away
        session.reopen()
    finally:
        session.bye_ok = False


def reconnect(session) -> None:
    """QRESYNC (RFC 7162 3.2.5): log out knowing UID and flags of every message, log in again and
    SELECT with (UIDVALIDITY MODSEQ known-UIDs), MODSEQ being the HIGHESTMODSEQ of the last
    SELECT (a FETCH may show messages expunged before a later MODSEQ whose EXPUNGE this session
    was not sent yet, so only that value is safe). Checked: every UID that is gone is
    in VANISHED (EARLIER), none that exists is, and every message whose flags changed meanwhile
    was sent in a FETCH during the SELECT (or changed after it: a MODSEQ above the new
    HIGHESTMODSEQ)."""
    view = session.view
    if view.slots:
        session.ok(b"FETCH 1:* (UID FLAGS MODSEQ)")
    known = {s.uid: s.flags for s in view.slots if s.uid is not None and s.flags is not None}
    modseq = max(view.highestmodseq, 1)
    space = view.space
    session.close()
    uids = _compact(sorted(known)) if known else b"1"
    session.open(params=b" (QRESYNC (%d %d %s))" % (space, modseq, uids))
    view = session.view
    if view.space != space:
        return   # UIDVALIDITY changed: the cache is void (not for INBOX)
    if view.slots:   # no EXPUNGE/VANISHED while answering FETCH (7.4.1): the SELECT's mailbox
        session.ok(b"FETCH 1:* (UID FLAGS MODSEQ)")
    now = {s.uid: s for s in view.slots if s.uid is not None}
    for uid, flags in known.items():
        slot = now.get(uid)
        if slot is None and uid not in view.vanished_earlier | view.vanished:
            view.fail(f"UID {uid} expunged while away, not in VANISHED (EARLIER)",
                      b"QRESYNC (%d %d ...) VANISHED %s HIGHESTMODSEQ %d" % (
                          space, modseq, seqset(sorted(view.vanished_earlier) or [0]),
                          view.highestmodseq), b"SELECT (QRESYNC)")
        elif slot is not None and uid in view.vanished_earlier:
            view.fail(f"UID {uid} in VANISHED (EARLIER) but exists", b"", b"SELECT (QRESYNC)")
        elif (slot is not None and slot.flags is not None and slot.flags != flags
              and uid not in view.reported and slot.modseq <= view.highestmodseq):
            view.fail(f"UID {uid} flags {sorted(flags)} -> {sorted(slot.flags)} (MODSEQ "
                      f"{slot.modseq}) not sent during SELECT (QRESYNC)", b"", b"SELECT (QRESYNC)")


def unchanged_since(session) -> None:
    """STORE (UNCHANGEDSINCE m) with the MODSEQ this session knows: a message not in [MODIFIED]
    must come back in a FETCH (RFC 7162 3.1.3); one in it must really have a higher MODSEQ."""
    slots = [s for s in session.view.slots if s.uid is not None and s.modseq]
    if not slots:
        return
    slot: Slot = session.rng.choice(slots)
    uid, modseq = slot.uid, slot.modseq
    flag = session.rng.choice([b"\\Flagged", b"$Label1", b"\\Answered"])
    mode = session.rng.choice([b"+FLAGS", b"-FLAGS"])
    tagged = session.run([b"UID STORE %d (UNCHANGEDSINCE %d) %s (%s)" % (uid, modseq, mode, flag)])[0]
    if b"[MODIFIED %d]" % uid not in tagged:
        return
    # With replicas the change that failed the STORE may have been made on another one: this
    # replica's sessions are told of it (MODSEQ included) once its change feed brings it
    deadline = time.monotonic() + (REPLICA_LAG_BOUND_S if session.replicas else 0)
    while True:
        session.run([b"NOOP", b"UID FETCH %d (MODSEQ)" % uid])
        now = next((s for s in session.view.slots if s.uid == uid), None)
        if now is None or now.modseq > modseq:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(REPLICA_LAG_POLL_S)   # a bounded poll for the change feed
    session.view.fail(f"UID {uid} reported MODIFIED but its MODSEQ is still {now.modseq}",
                      tagged, b"UID STORE (UNCHANGEDSINCE)")


def big_append(session) -> None:
    size = session.rng.randint(*BIG_APPEND_BYTES)
    session.append(b"INBOX", size=size)


SORT_PROGRAMS = [b"(ARRIVAL)", b"(REVERSE DATE)", b"(SUBJECT)", b"(FROM)", b"(SIZE)",
                 b"(REVERSE ARRIVAL SUBJECT)", b"(CC REVERSE SIZE)", b"(TO DATE)"]


def sort(session) -> None:
    """SORT or UID SORT (RFC 5256) of every message or of a SEARCH key; the model checks the
    result (model.View.sort_result), the server's sort order is not checked."""
    rng = session.rng
    key = b"ALL" if rng.random() < 0.5 else session.search_key()
    command = b"SORT " + rng.choice(SORT_PROGRAMS) + b" UTF-8 " + key
    session.ok(b"UID " + command if rng.random() < 0.5 else command)


def _some_uids(session) -> bytes:
    uids = session.known_uids()
    if not uids:
        return b"1:*"
    chosen = sorted(session.rng.sample(uids, min(len(uids), session.rng.randint(1, 4))))
    return _compact(chosen)


def _compact(uids: list[int]) -> bytes:
    return seqset(uids)
