"""One account's burst must not take every PostgreSQL connection of a gateway process (issue 15,
store/fairness.py): with a pool of 4, the sessions of an account whose store calls are all stuck
(here: its mailbox rows locked by another transaction, as a long write or a slow disk would)
hold at most `store_pool_per_account` (default half) connections, and another account logs in,
reads and writes meanwhile. Real `mailproxy serve`, real PostgreSQL, real Dovecot."""

from __future__ import annotations

import socket

import psycopg

from support.polling import wait_for

from .conftest import message
from .test_condstore import Raw
from .test_replicas import gateway_config

POOL = 4
STUCK_SESSIONS = 6     # more than the whole pool


def _waiting_on_locks(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND application_name = 'mailproxy'").fetchone()[0]


def test_one_accounts_stuck_burst_leaves_connections_for_the_others(proxy_factory, dovecot,
                                                                      pg_dsn):
    busy, busy_password = dovecot.add_user()
    other, other_password = dovecot.add_user()
    for user in (busy, other):
        dovecot.deliver(user, message(0))
    config = gateway_config(dovecot, pg_dsn)
    config["gateway"].update(store_pool_size=POOL, poll_interval="600s")
    proxy = proxy_factory(config)
    port = proxy.port("gw")
    burst = [Raw(port, busy, busy_password) for _ in range(STUCK_SESSIONS)]
    for client in burst:
        assert client.cmd("SELECT INBOX")[1].split()[1] == b"OK"

    with psycopg.connect(pg_dsn) as locker:     # one transaction: the rows stay locked
        locker.execute("SELECT m.id FROM mailboxes m JOIN accounts a ON a.id = m.account_id "
                       "WHERE a.username = %s FOR UPDATE", (busy,))
        for n, client in enumerate(burst):      # each waits on the lock, holding a connection
            client.sock.sendall(b"s%d STORE 1 +FLAGS (\\Flagged)\r\n" % n)
        wait_for(lambda: _waiting_on_locks(pg_dsn) == POOL // 2,
                 "the busy account's calls to hold their share of the pool")
        # another account is served meanwhile: login (with its sync), read, write
        bystander = Raw(port, other, other_password)
        assert bystander.cmd("SELECT INBOX")[1].split()[1] == b"OK"
        lines, done = bystander.cmd("STORE 1 +FLAGS (\\Seen)")
        assert done.split()[1] == b"OK" and lines == [b"* 1 FETCH (FLAGS (\\Recent \\Seen))"], lines
        assert _waiting_on_locks(pg_dsn) == POOL // 2    # never more than its share
        for client in burst:                    # still waiting: nothing was answered yet
            client.sock.settimeout(0)
            try:
                peeked: bytes | None = client.sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                peeked = None
            client.sock.settimeout(60)
            assert peeked is None, f"answered (or closed) while locked: {peeked!r}"
        locker.rollback()
    # once the rows are free, every queued call of the busy account completes
    for n, client in enumerate(burst):
        while not (line := client.file.readline()).startswith(b"s%d " % n):
            assert line, "connection closed"
        assert line.split()[1] == b"OK", line
    bystander.close()
    for client in burst:
        client.close()
