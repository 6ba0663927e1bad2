"""Two gateway processes (`mailproxy serve`, real subprocesses) on one PostgreSQL store: what one
replica's session changes, and what either replica's fetcher ingests, reaches IDLE sessions on
the other (the store's LISTEN/NOTIFY change feed, proxy/store/_pg_notify.py)."""

from __future__ import annotations

import re

import psycopg

from support.polling import TIMEOUT, wait_for

from .conftest import message
from .test_condstore import Raw

HOST = "127.0.0.1"


def gateway_config(dovecot, store: str) -> dict:
    return {
        "listeners": [{"name": "gw", "protocol": "imap", "mode": "gateway",
                       "address": "127.0.0.1:0"}],
        "upstreams": {"main": {"host": HOST, "pop3": {"port": dovecot.pop3_port}}},
        "routes": [{"match": "*", "upstream": "main"}],
        "gateway": {"store": store, "poll_interval": "1s"},
    }


class Idle:
    """An IDLE command in progress on a `Raw` client; `until(pattern)` reads pushed lines."""

    def __init__(self, client: Raw):
        self.client = client
        client.sock.sendall(b"idle IDLE\r\n")
        assert client.file.readline().startswith(b"+ ")

    def until(self, pattern: bytes) -> bytes:
        """The first pushed line matching `pattern` (the socket's 10 s timeout bounds the wait)."""
        while True:
            line = self.client.file.readline().rstrip(b"\r\n")
            if not line:
                raise AssertionError(f"connection closed waiting for {pattern!r}")
            if re.search(pattern, line):
                return line

    def done(self) -> None:
        self.client.sock.sendall(b"DONE\r\n")
        while not self.client.file.readline().startswith(b"idle "):
            pass


def two_replicas_selected(proxy_factory, dovecot, pg_dsn: str, count: int):
    """Two replicas on the store `pg_dsn`, a user with `count` messages upstream, and a session
    of that user on each (`on_a`, `on_b`), INBOX selected: returns (name, on_a, on_b)."""
    name, password = dovecot.add_user()
    for n in range(count):
        dovecot.deliver(name, message(n))
    a = proxy_factory(gateway_config(dovecot, pg_dsn))
    b = proxy_factory(gateway_config(dovecot, pg_dsn))
    on_a = Raw(a.port("gw"), name, password)
    on_b = Raw(b.port("gw"), name, password)
    for client in (on_a, on_b):
        assert b"* %d EXISTS" % count in client.cmd("SELECT INBOX")[0]
    return name, on_a, on_b


def pushed_both_ways(dovecot, name: str, on_a: Raw, idle: Idle, seq: int) -> Idle:
    """A flag set on message `seq` through A shows up live in B's IDLE (`idle`); then a 4th
    upstream message, fetched by whichever replica polls first, reaches IDLE sessions on both.
    Returns A's IDLE, still idling."""
    assert on_a.cmd(f"STORE {seq} +FLAGS.SILENT (\\Flagged)")[1].split()[1] == b"OK"
    fetch = rb"^\* %d FETCH" % seq
    assert re.search(fetch + rb" \(.*FLAGS \(\\Flagged\)", idle.until(fetch))
    idle_a = Idle(on_a)
    dovecot.deliver(name, message(3))
    assert idle.until(rb"EXISTS") == b"* 4 EXISTS"
    assert idle_a.until(rb"EXISTS") == b"* 4 EXISTS"
    return idle_a


def test_changes_through_one_replica_reach_idle_sessions_on_the_other(proxy_factory, dovecot,
                                                                       pg_dsn):
    name, on_a, on_b = two_replicas_selected(proxy_factory, dovecot, pg_dsn, 3)

    idle = Idle(on_b)
    pushed_both_ways(dovecot, name, on_a, idle, 2).done()

    # an expunge through A
    assert on_a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")[1].split()[1] == b"OK"
    assert on_a.cmd("EXPUNGE")[0] == [b"* 1 EXPUNGE"]
    assert idle.until(rb"EXPUNGE") == b"* 1 EXPUNGE"
    idle.done()

    # both views agree (\\Recent is per session: RFC 3501 2.3.2)
    fetch = "UID FETCH 1:* (FLAGS)"
    views = [[line.replace(b" \\Recent", b"").replace(b"\\Recent", b"")
              for line in client.cmd(fetch)[0]] for client in (on_a, on_b)]
    assert views[0] == views[1]
    assert views[0] == [b"* 1 FETCH (UID 2 FLAGS (\\Flagged))", b"* 2 FETCH (UID 3 FLAGS ())",
                        b"* 3 FETCH (UID 4 FLAGS ())"]
    on_a.close()
    on_b.close()


# each probe opens a PostgreSQL connection: poll less often than support.polling's default;
# bounded as every wait (support.polling.TIMEOUT): 20 s was reached under load (two rounds of
# acks of two subprocess replicas, 2 s apart when quiet)
DB_POLL = {"timeout": TIMEOUT, "interval": 0.05}


def query(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def both_acked_past_now(dsn: str) -> None:
    """Until both replicas have acked (and swept) after this moment (_pg_bodies.py)."""
    [(now,)] = query(dsn, "SELECT pg_current_xact_id()::text::bigint")
    wait_for(lambda: [n for (n,) in query(
        dsn, "SELECT count(*) FROM replicas WHERE horizon > %s", now)] == [2],
        "both replicas' acks", **DB_POLL)


def test_message_expunged_on_one_replica_stays_readable_on_the_other_until_told(
        proxy_factory, dovecot, pg_dsn):
    """RFC 2180 4.1.1 across processes: B's session keeps reading a message A expunged (and
    A's session stopped showing) until B's session has been sent the EXPUNGE; then the body
    is collected."""
    _, on_a, on_b = two_replicas_selected(proxy_factory, dovecot, pg_dsn, 2)
    assert on_a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")[1].split()[1] == b"OK"
    assert on_a.cmd("EXPUNGE")[0] == [b"* 1 EXPUNGE"]
    [(body_id,)] = wait_for(lambda: query(pg_dsn, "SELECT body_id FROM orphans"), "the orphan",
                            **DB_POLL)
    wait_for(lambda: query(pg_dsn, "SELECT 1 FROM pins WHERE body_id = %s", body_id), "B's pin",
             **DB_POLL)
    on_a.cmd("NOOP")                      # A collects after each command
    both_acked_past_now(pg_dsn)           # ... and both swept, twice
    both_acked_past_now(pg_dsn)
    lines, done = on_b.cmd("FETCH 1 (BODY.PEEK[TEXT])")   # no EXPUNGE during FETCH (7.4.1)
    assert done.split()[1] == b"OK"
    assert lines[1:] == [b"body of message 0", b")", b"* 1 FETCH (UID 1 FLAGS (\\Deleted))"]
    assert on_b.cmd("NOOP")[0] == [b"* 1 EXPUNGE"]
    wait_for(lambda: not query(pg_dsn, "SELECT 1 FROM bodies WHERE id = %s", body_id),
             "the body collected", **DB_POLL)
    assert query(pg_dsn, "SELECT count(*) FROM orphans") == [(0,)]
    on_a.close()
    on_b.close()


def test_mailbox_deleted_or_renamed_on_one_replica_disconnects_sessions_on_the_other(
        proxy_factory, dovecot, pg_dsn):
    """As Dovecot (2.3.19, checked): a session whose selected mailbox another session deletes
    or renames gets `* BYE IMAP session state is inconsistent, please relogin.` (at once when
    IDLE), here across processes."""
    name, password = dovecot.add_user()
    a = proxy_factory(gateway_config(dovecot, pg_dsn))
    b = proxy_factory(gateway_config(dovecot, pg_dsn))
    on_a = Raw(a.port("gw"), name, password)
    for box in ("Work", "Old"):
        assert on_a.cmd(f"CREATE {box}")[1].split()[1] == b"OK"
    bye = b"* BYE IMAP session state is inconsistent, please relogin."
    for command in ("DELETE Work", "RENAME Old New"):
        on_b = Raw(b.port("gw"), name, password)
        assert on_b.cmd(f"SELECT {command.split()[1]}")[1].split()[1] == b"OK"
        idle = Idle(on_b)
        assert on_a.cmd(command)[1].split()[1] == b"OK"
        assert idle.until(rb"^\* BYE") == bye
        assert on_b.file.readline() == b""      # then closed
        on_b.sock.close()
    on_a.close()
