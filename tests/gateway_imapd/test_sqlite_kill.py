"""The gateway on SQLite SIGKILLed in the middle of APPENDs, MOVEs, EXPUNGEs or an ingest, then
restarted on the same file (test_replica_kill.py does the same with two processes on
PostgreSQL): each command is one SQLite transaction (WAL), so after the restart every message
is there exactly once with its body, everything the killed process acknowledged is done,
UIDVALIDITY has not changed, no UID is reused or moved to another message and UIDNEXT has
not gone back (RFC 3501 2.3.1.1), and a POP3 DELE came only after the message was stored."""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import random
import re
import signal
import socket
import sqlite3

from proxy.gateway.ingest_batches import BATCH_MESSAGES
from support.polling import wait_for

from .conftest import message
from .test_replica_kill import pipelined_then_killed
from .test_replicas import gateway_config

COUNT = 30
ROUNDS = 3


def login(proxy, name: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", proxy.port("gw"), timeout=30)
    client.login(name, password)
    return client


def state(client: imaplib.IMAP4, mailbox: str) -> tuple[int, int, dict[int, int]]:
    """(UIDVALIDITY, UIDNEXT, {UID: n of its `<mn@example.org>`}) of `mailbox`, each body
    checked byte for byte against `message(n)`."""
    typ, data = client.status(mailbox, "(UIDVALIDITY UIDNEXT)")
    assert typ == "OK", data
    validity = int(re.search(rb"UIDVALIDITY (\d+)", data[0])[1])
    uidnext = int(re.search(rb"UIDNEXT (\d+)", data[0])[1])
    typ, data = client.select(mailbox, readonly=True)
    assert typ == "OK", data
    found: dict[int, int] = {}
    if data[0] != b"0":
        typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert typ == "OK", data
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0])[1])
                n = int(re.search(rb"Message-ID: <m(\d+)@example.org>", item[1])[1])
                assert item[1] == message(n), (uid, n)
                assert uid not in found and uid < uidnext, (uid, uidnext)
                found[uid] = n
    return validity, uidnext, found


class Ledger:
    """What the store must show after each restart, from what was seen before the kills."""

    def __init__(self, client: imaplib.IMAP4, mailboxes: tuple[str, ...]):
        self.mailboxes = mailboxes
        self.seen = {box: state(client, box) for box in mailboxes}

    def check(self, client: imaplib.IMAP4, may_vanish: set[int], context) -> None:
        now = {box: state(client, box) for box in self.mailboxes}
        where: dict[int, str] = {}
        for box, (validity, uidnext, found) in now.items():
            old_validity, old_uidnext, old_found = self.seen[box]
            assert validity == old_validity, (context, box, "UIDVALIDITY changed")
            assert uidnext >= old_uidnext, (context, box, "UIDNEXT went back")
            for uid, n in found.items():
                assert n not in where, (context, n, "twice", box, where[n])
                where[n] = box
                if uid in old_found:   # a UID never names another message
                    assert old_found[uid] == n, (context, box, uid, old_found[uid], n)
            # a message that stayed in its mailbox kept its UID; a new one got a UID past
            # what UIDNEXT was
            for uid in set(found) - set(old_found):
                assert uid >= old_uidnext, (context, box, uid, old_uidnext, "UID reused")
        before = {n for _, _, found in self.seen.values() for n in found.values()}
        lost = before - set(where) - may_vanish
        assert not lost, (context, "lost", sorted(lost))
        self.seen = now


def test_sigkill_during_appends_moves_and_expunges_then_restart(proxy_factory, dovecot,
                                                                 tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    for n in range(COUNT):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, str(tmp_path / "gateway.db"))
    config["gateway"]["poll_interval"] = "600s"
    first = proxy_factory(config)
    client = login(first, name, password)
    wait_for(lambda: int(client.select("INBOX")[1][0]) == COUNT, "the first sync stored")
    client.create("Archive")   # (the gateway may have made it: NO [ALREADYEXISTS])
    ledger = Ledger(client, ("INBOX", "Archive"))
    client.logout()
    first.stop()
    appended = 1000
    for round_no in range(ROUNDS * 3):
        kind = ("append", "move", "expunge")[round_no % 3]
        if kind == "append":
            numbers = range(appended, appended + COUNT)
            appended += COUNT
            select, commands = None, b"".join(
                b"a%d APPEND Archive {%d+}\r\n%s\r\n" % (n, len(message(n)), message(n))
                for n in numbers)
        elif kind == "move":   # there and back again, alternately
            src, dst = ("INBOX", "Archive") if round_no % 2 else ("Archive", "INBOX")
            select = src.encode()
            commands = b"".join(b"m%d UID MOVE %d %s\r\n" % (n, uid, dst.encode())
                                for uid, n in sorted(ledger.seen[src][2].items()))
        else:
            select = b"Archive"
            archive = sorted(ledger.seen["Archive"][2].items())
            doomed = archive[: len(archive) // 2]
            commands = b"".join(b"f%d UID STORE %d +FLAGS.SILENT (\\Deleted)\r\n"
                                b"e%d UID EXPUNGE %d\r\n" % (n, uid, n, uid) for uid, n in doomed)
        victim = proxy_factory(config)
        answered = pipelined_then_killed(victim, name, password, select, commands, rng)
        checker = proxy_factory(config)       # restarted on the same SQLite file
        client = login(checker, name, password)
        context = (seed, round_no, kind, sorted(answered)[:5])
        if kind == "expunge":
            may_vanish = {n for _, n in doomed}
            ledger.check(client, may_vanish, context)
            gone = may_vanish - set(ledger.seen["Archive"][2].values())
            done = {int(t[1:]) for t in answered if t.startswith(b"e")}
            assert done <= gone, (context, sorted(done - gone))
        else:
            ledger.check(client, set(), context)
            box = {v: k for k, v in ledger.seen["Archive" if kind == "append" else dst][2].items()}
            prefix = b"a" if kind == "append" else b"m"
            done = {int(t[1:]) for t in answered if t.startswith(prefix)}
            assert done <= set(box), (context, sorted(done - set(box)))
        client.logout()
        checker.stop()


def test_sigkill_mid_ingest_with_delete_after_fetch_then_restart(proxy_factory, dovecot, tmp_path):
    """Killed while it ingests under delete-after-fetch: after the restart every upstream
    message is stored exactly once (UIDs 1..N, bodies byte for byte) and the upstream is
    emptied only of what the store holds."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    total = BATCH_MESSAGES * 6
    for n in range(total):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, str(tmp_path / "gateway.db"))
    config["gateway"]["upstream_retention"] = "delete-after-fetch"
    victim = proxy_factory(config)
    with socket.create_connection(("127.0.0.1", victim.port("gw")), timeout=30) as sock:
        sock.recv(4096)
        sock.sendall(b'l LOGIN "%s" "%s"\r\n' % (name.encode(), password.encode()))  # fetches
        first = BATCH_MESSAGES * rng.randint(1, 3)   # killed with the next batches on the way
        wait_for(lambda: stored_rows(tmp_path / "gateway.db") >= first,
                 "the victim's first batches committed", interval=0.005)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    survivor = proxy_factory(config)
    client = login(survivor, name, password)
    wait_for(lambda: int(client.select("INBOX")[1][0]) == total and not dovecot_count(
        dovecot, name, password), f"{total} messages stored and deleted upstream ({seed=})")
    validity, uidnext, found = state(client, "INBOX")
    assert sorted(found.values()) == list(range(total)), seed
    assert sorted(found) == list(range(1, total + 1)), seed
    client.logout()


def stored_rows(path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]
    except sqlite3.Error:   # not created yet
        return 0


def dovecot_count(dovecot, name: str, password: str) -> int:
    pop = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=30)
    try:
        pop.user(name)
        pop.pass_(password)
        return pop.stat()[0]
    finally:
        pop.quit()
