"""A body collect stuck on a stalled PostgreSQL (its row locked by another transaction, as a long
write or a slow disk would) holds up only the EXPUNGEs and MOVEs of the bodies it was given, not
every removal of the process (hub.py `removing`). On SQLite store calls are queued one by one
anyway: a stalled database stalls every command, so there is nothing to compare there."""

from __future__ import annotations

import concurrent.futures

import psycopg
import trio

from support.polling import TIMEOUT, wait_for

from .conftest import GatewayHandle, message


def _body_of_uid_1(dsn: str, user: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT m.body_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
            "JOIN accounts a ON a.id = b.account_id "
            "WHERE a.username = %s AND b.name = 'INBOX' AND m.uid = 1", (user,)).fetchone()
    assert row is not None
    return int(row[0])


def _waiting_for_a_collect(hub) -> bool:
    return hub._collect_ended.statistics().tasks_waiting > 0


def _bodies_exist(dsn: str, ids: list[int]) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM bodies WHERE id = ANY(%s)", (ids,)).fetchone())


async def test_an_expunge_does_not_wait_for_a_collect_stuck_on_other_bodies(
        dovecot, tmp_path, nursery, pg_dsn):
    """Session a expunges UID 1 while session b shows it; b's NOOP sends the EXPUNGE, so the body
    is garbage, and b's collect after the reply waits on a lock held on that body's row (up to
    store_query_timeout, here longer than the client's timeout). Session a then expunges UID 2,
    another body: answered while the lock is still held. Before, every removal of the process
    waited for any collect in flight: a's EXPUNGE hung until the collect was cut (the client's
    timeout here). (The row is locked after a's first expunge: a transaction older than that
    would keep its body below every sweep's horizon, `_pg_bodies.py`.) A hung EXPUNGE is seen as
    such (a task waiting for a collect to end), not inferred from the client's timeout."""
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=pg_dsn,
                            store_query_timeout="300s")
    await gateway.start(nursery)

    def hub():
        [backend] = gateway.service._backends.values()   # the one account's
        return backend.hub

    def clients():
        a, b = gateway.imaplib(), gateway.imaplib()
        a.sock.settimeout(TIMEOUT)   # only a hung server's bound: the test's signal is a state
        for n in (1, 2):
            assert a.append("INBOX", None, None, message(n))[0] == "OK"
        body = _body_of_uid_1(pg_dsn, user)
        for client in (a, b):
            assert client.select("INBOX")[0] == "OK"
        assert a.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert a.expunge() == ("OK", [b"1"])   # b still shows UID 1: its body is kept
        with psycopg.connect(pg_dsn) as locker:   # one transaction: the row stays locked
            locker.execute("SELECT id FROM bodies WHERE id = %s FOR UPDATE", (body,))
            assert b.noop()[0] == "OK"   # its EXPUNGE: the body is garbage, collected
            assert b.untagged_responses.pop("EXPUNGE") == [b"1"]
            # b's collect after the reply takes the garbage; it cannot end while the row is locked
            wait_for(lambda: body not in hub().garbage, "session b's collect to take the body")
            assert a.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                expunge = pool.submit(a.expunge)   # UID 2, at sequence number 1
                # the failure signal is a state, not the client's timeout: answered, or parked
                # until a collect ends (the only wait in `removing`)
                wait_for(lambda: expunge.done() or _waiting_for_a_collect(hub()),
                         "a's EXPUNGE answered or waiting for a collect")
                try:
                    assert expunge.done(), "a's EXPUNGE waits for b's collect of another body"
                    assert _bodies_exist(pg_dsn, [body])   # still stuck: a did not wait for it
                finally:
                    locker.rollback()
                assert expunge.result() == ("OK", [b"1"])
        wait_for(lambda: not _bodies_exist(pg_dsn, [body]), "the collect to finish once free")
        assert b.noop()[0] == "OK" and b.untagged_responses.pop("EXPUNGE") == [b"1"]
        a.logout()
        b.logout()
    try:
        await trio.to_thread.run_sync(clients)
    finally:
        await gateway.stop()
