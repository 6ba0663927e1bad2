"""A gateway replica frozen in the middle of a transaction (SIGSTOP: as a lost node or a network
cut, the server sees no FIN) must not stall the other replicas' writes for good: its connection
is idle in a transaction holding mailbox row locks, and after the replica lease
(`gateway.store_replica_lease`) PostgreSQL ends it (`idle_in_transaction_session_timeout`,
_pg_schema.open_pool), rolling it back; the other replica's write then completes, and the
frozen replica, once running again, redoes its command on a fresh connection: the message is
moved exactly once. Real processes, real PostgreSQL, real Dovecot."""

from __future__ import annotations

import imaplib
import os
import signal

import psycopg

from proxy.store._pg_schema import with_idle_transaction_bound
from support.polling import wait_for

from .conftest import message
from .test_condstore import Raw
from .test_replica_kill import message_ids
from .test_replicas import gateway_config

COUNT = 3


def _backends(dsn: str, condition: str) -> list[int]:
    """The pids of the gateway's store connections matching `condition`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = "
            f"'mailproxy' AND {condition}").fetchall()]


def test_a_replica_frozen_mid_transaction_stalls_the_others_only_for_the_lease(
        proxy_factory, dovecot, pg_dsn):
    name, password = dovecot.add_user()
    for n in range(COUNT):
        dovecot.deliver(name, message(n))
    config = gateway_config(dovecot, pg_dsn)
    config["gateway"].update(poll_interval="600s", store_ack_interval="200ms",
                             store_replica_lease="2s")
    victim, survivor = proxy_factory(config), proxy_factory(config)
    mover = Raw(victim.port("gw"), name, password)
    assert mover.cmd("SELECT INBOX")[1].split()[1] == b"OK"
    writer = Raw(survivor.port("gw"), name, password)
    assert writer.cmd("SELECT INBOX")[1].split()[1] == b"OK"

    with psycopg.connect(pg_dsn) as locker:      # hold Archive so the MOVE stops half way
        locker.execute("SELECT m.id FROM mailboxes m JOIN accounts a ON a.id = m.account_id "
                       "WHERE a.username = %s AND m.name = 'Archive' FOR UPDATE", (name,))
        mover.sock.sendall(b"m UID MOVE 1 Archive\r\n")   # INBOX locked, waits for Archive
        [frozen] = wait_for(lambda: _backends(pg_dsn, "wait_event_type = 'Lock'"),
                            "the MOVE to wait for the Archive row")
        os.kill(victim.pid, signal.SIGSTOP)
        locker.rollback()
    try:
        # the frozen replica's transaction now sits idle holding INBOX (and Archive): a write
        # to INBOX through the other replica waits, then goes through once the server has
        # ended the frozen transaction (after the lease); nothing of the MOVE is done
        lines, done = writer.cmd("UID STORE 2 +FLAGS (\\Flagged)")
        assert done.split()[1] == b"OK", (lines, done)
        # the server ended the frozen transaction's backend (it releases its locks, which let
        # the STORE through, a moment before it leaves pg_stat_activity). Not a count of all
        # 'idle in transaction' backends: the survivor's own acks (every store_ack_interval)
        # show that state between their statements, ~5% of the time
        wait_for(lambda: frozen not in _backends(pg_dsn, "true"),
                 "the frozen replica's transaction to be ended by the server")
        assert writer.cmd("UID SEARCH ALL")[0] == [b"* SEARCH 1 2 3"]
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    # the frozen replica runs again: its MOVE is redone on a fresh connection, once
    while not (line := mover.file.readline()).startswith(b"m "):
        assert line, "connection closed"
    assert line.split()[1] == b"OK", line
    watcher = imaplib.IMAP4("127.0.0.1", survivor.port("gw"), timeout=30)
    watcher.login(name, password)
    assert message_ids(watcher, "INBOX") == [1, 2] and message_ids(watcher, "Archive") == [0]
    watcher.logout()
    mover.close()
    writer.close()


def test_the_bound_keeps_the_urls_own_options(pg_dsn):
    assert "options=" in pg_dsn             # the fixture's schema is a search_path option
    with psycopg.connect(pg_dsn) as plain:
        search_path = plain.execute("SHOW search_path").fetchone()[0]
    with psycopg.connect(with_idle_transaction_bound(pg_dsn, 2.5)) as bounded:
        assert bounded.execute("SHOW search_path").fetchone()[0] == search_path
        assert bounded.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] \
            == "2500ms"
