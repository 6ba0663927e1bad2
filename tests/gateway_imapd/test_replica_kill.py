"""A gateway replica SIGKILLed in the middle of MOVEs, APPENDs or EXPUNGEs (issue 15): each is
one PostgreSQL transaction, so a kill leaves every message exactly once (in its old mailbox or
its new one; appended or not; expunged or not), with its body, everything the killed replica
acknowledged is done, and the surviving replica's sessions agree with the store."""

from __future__ import annotations

import imaplib
import random
import re
import signal
import socket
import time

import psycopg

from proxy.gateway.ingest_batches import BATCH_MESSAGES
from support.polling import wait_for

from .conftest import message
from .test_replicas import gateway_config

COUNT = 40
ROUNDS = 3


def message_ids(client: imaplib.IMAP4, mailbox: str) -> list[int]:
    """The n of `<mn@example.org>` of every message in `mailbox`, each body read in full."""
    typ, data = client.select(mailbox)
    assert typ == "OK"
    if data[0] == b"0":
        return []
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    found = []
    for item in data:
        if isinstance(item, tuple):
            n = int(re.search(rb"Message-ID: <m(\d+)@example.org>", item[1]).group(1))
            assert item[1] == message(n)          # the body, byte for byte
            found.append(n)
    return found


def survivor_sessions(proxy_factory, config: dict, name: str, password: str, mailbox: str,
                      count: int) -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
    """The replica that stays up, with two sessions of the user: `watcher` (reads the store
    between rounds) and `view` (stays selected on `mailbox`, which has `count` messages)."""
    survivor = proxy_factory(config)
    watcher = imaplib.IMAP4("127.0.0.1", survivor.port("gw"), timeout=30)
    watcher.login(name, password)
    view = imaplib.IMAP4("127.0.0.1", survivor.port("gw"), timeout=30)
    view.login(name, password)
    assert view.select(mailbox) == ("OK", [b"%d" % count])
    return watcher, view


def test_sigkill_of_a_replica_during_moves_loses_and_duplicates_nothing(proxy_factory, dovecot,
                                                                        pg_dsn):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    for n in range(COUNT):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, pg_dsn)
    config["gateway"]["poll_interval"] = "600s"
    watcher, view = survivor_sessions(proxy_factory, config, name, password, "INBOX", COUNT)
    assert watcher.select("INBOX") == ("OK", [b"%d" % COUNT])
    src, dst = "INBOX", "Archive"
    for round_no in range(ROUNDS):
        victim = proxy_factory(config)
        mover = imaplib.IMAP4("127.0.0.1", victim.port("gw"), timeout=30)
        mover.login(name, password)
        typ, data = mover.select(src)
        assert typ == "OK", (seed, data)
        typ, [uids] = mover.uid("SEARCH", "ALL")
        # pipelined: one MOVE per message, the kill lands in the middle of the stream
        mover.send(b"".join(b"m%d UID MOVE %s %s\r\n" % (i, uid, dst.encode())
                            for i, uid in enumerate(uids.split())))
        time.sleep(rng.uniform(0.01, 0.15))       # a random moment, not a synchronisation
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        mover.shutdown()
        everything = message_ids(watcher, src) + message_ids(watcher, dst)
        assert sorted(everything) == list(range(COUNT)), (seed, round_no, everything)
        src, dst = dst, src
    told_everything(view, watcher, "INBOX")   # a session selected all along: every move
    view.logout()
    watcher.logout()


def pipelined_then_killed(victim, user: str, password: str, select: bytes | None,
                          commands: bytes, rng: random.Random) -> set[bytes]:
    """Log in to `victim` (SELECT `select`), send `commands` at once, SIGKILL the replica at a
    random moment, and return the tags it answered OK before it died."""
    sock = socket.create_connection(("127.0.0.1", victim.port("gw")), timeout=30)
    file = sock.makefile("rb")
    file.readline()
    setup = b'l LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode())
    setup += b"s SELECT %s\r\n" % select if select else b""
    sock.sendall(setup)
    for tag in (b"l ", b"s ") if select else (b"l ",):
        while not (line := file.readline()).startswith(tag):
            assert line, "connection closed"
        assert line.split()[1] == b"OK", line
    sock.sendall(commands)
    time.sleep(rng.uniform(0.01, 0.15))       # a random moment, not a synchronisation
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    answered = {line.split()[0] for line in file if line.split()[1:2] == [b"OK"]}
    sock.close()
    return answered


def told_everything(view: imaplib.IMAP4, watcher: imaplib.IMAP4, mailbox: str) -> None:
    """Wait until a session selected on the survivor all along shows, after a NOOP, exactly the
    UIDs the store has: the survivor hears of the killed replica's commits through its change
    feed, a moment later (bounded poll)."""
    watcher.select(mailbox)
    fresh = watcher.uid("SEARCH", "ALL")[1][0].split()

    def told() -> list[bytes]:
        assert view.noop()[0] == "OK"
        return view.uid("SEARCH", "ALL")[1][0].split()

    wait_for(lambda: told() == fresh, f"the survivor's session to show {fresh}")


def test_sigkill_of_a_replica_during_appends_keeps_each_acknowledged_one_once(
        proxy_factory, dovecot, pg_dsn):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    config = gateway_config(dovecot, pg_dsn)
    config["gateway"]["poll_interval"] = "600s"
    watcher, view = survivor_sessions(proxy_factory, config, name, password, "Archive", 0)
    sent: list[int] = []
    acknowledged: set[int] = set()
    for round_no in range(ROUNDS):
        numbers = range(1000 * (round_no + 1), 1000 * (round_no + 1) + COUNT)
        commands = b"".join(b"a%d APPEND Archive {%d+}\r\n%s\r\n" % (n, len(message(n)), message(n))
                            for n in numbers)
        answered = pipelined_then_killed(proxy_factory(config), name, password, None, commands,
                                         rng)
        sent += numbers
        acknowledged |= {int(tag[1:]) for tag in answered if tag.startswith(b"a")}
        stored = message_ids(watcher, "Archive")         # each body checked byte for byte
        assert len(stored) == len(set(stored)), (seed, round_no, stored)
        assert acknowledged <= set(stored) <= set(sent), (seed, round_no, stored)
    told_everything(view, watcher, "Archive")   # told of every append
    view.logout()
    watcher.logout()


def test_sigkill_of_a_replica_during_expunges_loses_nothing_it_did_not_expunge(
        proxy_factory, dovecot, pg_dsn):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    for n in range(COUNT * ROUNDS):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, pg_dsn)
    config["gateway"]["poll_interval"] = "600s"
    watcher, view = survivor_sessions(proxy_factory, config, name, password, "INBOX",
                                      COUNT * ROUNDS)
    uid_of = {n: uid for n, uid in zip(message_ids(watcher, "INBOX"),
                                       watcher.uid("SEARCH", "ALL")[1][0].split(), strict=True)}
    watcher.select("INBOX")
    assert watcher.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
    expunged: set[int] = set()
    for round_no in range(ROUNDS):
        doomed = range(round_no * COUNT, (round_no + 1) * COUNT)
        commands = b"".join(b"e%d UID EXPUNGE %s\r\n" % (n, uid_of[n]) for n in doomed)
        answered = pipelined_then_killed(proxy_factory(config), name, password, b"INBOX",
                                         commands, rng)
        expunged |= {int(tag[1:]) for tag in answered if tag.startswith(b"e")}
        left = set(message_ids(watcher, "INBOX"))         # each body checked byte for byte
        assert not left & expunged, (seed, round_no, sorted(left & expunged))
        # nothing the killed replica was not asked to expunge is gone
        assert set(range((round_no + 1) * COUNT, COUNT * ROUNDS)) <= left, (seed, round_no)
    told_everything(view, watcher, "INBOX")
    view.logout()
    watcher.logout()


def stored_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_sigkill_of_the_fetching_replica_mid_ingest_stores_every_message_once(
        proxy_factory, dovecot, pg_dsn):
    """The replica holding an account's fetch lease dies while it ingests: the other replica
    takes the lease (PostgreSQL ended the dead one's session lock) and stores the rest; every
    upstream message is in the store exactly once, byte for byte, with UIDs 1..N."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    total = BATCH_MESSAGES * 8
    for n in range(total):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, pg_dsn)
    victim, survivor = proxy_factory(config), proxy_factory(config)
    with socket.create_connection(("127.0.0.1", victim.port("gw")), timeout=30) as sock:
        sock.recv(4096)
        sock.sendall(b'l LOGIN "%s" "%s"\r\n' % (name.encode(), password.encode()))  # fetches
        # killed once its first batch is committed, with the next ones on the way
        first = BATCH_MESSAGES * rng.randint(1, 3)
        wait_for(lambda: stored_rows(pg_dsn) >= first, "the victim's first batches committed",
                 interval=0.005)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    partial = stored_rows(pg_dsn)
    watcher = imaplib.IMAP4("127.0.0.1", survivor.port("gw"), timeout=30)
    watcher.login(name, password)             # its sync, then every poll_interval

    def stored() -> int:
        return int(watcher.select("INBOX")[1][0])

    wait_for(lambda: stored() == total, f"{total} messages stored ({seed=}, {partial=})")
    assert sorted(message_ids(watcher, "INBOX")) == list(range(total)), (seed, partial)
    uids = [int(uid) for uid in watcher.uid("SEARCH", "ALL")[1][0].split()]
    assert uids == list(range(1, total + 1)), (seed, partial, uids)
    watcher.logout()
