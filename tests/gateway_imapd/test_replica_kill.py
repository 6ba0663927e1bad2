"""A gateway replica SIGKILLed in the middle of MOVEs (issue 15): each MOVE is one PostgreSQL
transaction, so a kill leaves every message exactly once, in its old mailbox or its new one,
with its body, and the surviving replica's sessions agree with the store."""

from __future__ import annotations

import imaplib
import random
import re
import signal
import time

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


def test_sigkill_of_a_replica_during_moves_loses_and_duplicates_nothing(proxy_factory, dovecot,
                                                                        pg_dsn):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name, password = dovecot.add_user()
    for n in range(COUNT):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, pg_dsn)
    config["gateway"]["poll_interval"] = "600s"
    survivor = proxy_factory(config)
    watcher = imaplib.IMAP4("127.0.0.1", survivor.port("gw"), timeout=30)
    watcher.login(name, password)
    assert watcher.select("INBOX") == ("OK", [b"%d" % COUNT])
    view = imaplib.IMAP4("127.0.0.1", survivor.port("gw"), timeout=30)   # stays selected
    view.login(name, password)
    assert view.select("INBOX") == ("OK", [b"%d" % COUNT])
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
    # a session on the survivor, selected all along, was told of every move
    watcher.select("INBOX")
    fresh = watcher.uid("SEARCH", "ALL")[1][0].split()
    assert view.noop()[0] == "OK"
    typ, data = view.fetch("1:*", "(UID)") if fresh else ("OK", [])
    told = [re.search(rb"UID (\d+)", item).group(1) for item in data if item]
    assert told == fresh, (seed, told, fresh)
    view.logout()
    watcher.logout()
