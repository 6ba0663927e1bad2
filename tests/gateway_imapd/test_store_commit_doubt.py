"""An APPEND whose COMMIT is on the wire when the store's connection is cut
(`gateway.store_query_timeout`, proxy/store/_pg_commit.py): the client is told what happened,
within the one bound the operator named.

The COMMIT is held at the server by a deferred trigger waiting for an advisory lock the test
holds, and the test cuts the gateway's connection to that backend as the store's deadline does
(the socket shut down, `_pg_deadline.py`) as soon as it sees the COMMIT held: every step waits
for an event, none for the clock (the bound itself is 2 min, reached only by a broken build).
Then either the database server freezes (SIGSTOP of every process, as test_store_frozen.py)
with that COMMIT in its hands and, once resumed, runs it: the client gets OK and the message is
stored once (before, it got NO [UNAVAILABLE] for a stored message, and a client retrying stored
it twice); or the held transaction is ended instead: NO [UNAVAILABLE], and nothing is stored.
Real PostgreSQL, real Dovecot, the gateway in-process.

The bound: a COMMIT whose outcome the server keeps to itself (the lock never released) is
settled no later than the end of the call's one `store_query_timeout` (before, the doubt had a
bound of its own as long again). The store's deadline cut by the clock is test_store_frozen.py."""

from __future__ import annotations

import contextlib
import os
import re
import socket

import psycopg
import pytest
import trio

from proxy.store._pg_commit import SETTLE_SHARE
from proxy.store.base import StoreUnavailable
from proxy.store.postgres import open_postgres
from support import polling
from support.postgres import start_postgres

from .conftest import GatewayHandle
from .test_condstore import Raw
from .test_store_frozen import frozen, server_processes

LOCK = 4242
HOLD_COMMIT = f"""
CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK}); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON messages
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();
"""
MESSAGE = b"From: a@example.org\r\nSubject: draft\r\n\r\nkept once\r\n"


BOUND = "120s"   # the store_query_timeout of the gateway tests: no step waits for it


def _held_commit(dsn: str) -> tuple[int, int] | None:
    """(pid, client port) of the gateway's backend whose COMMIT waits for the test's lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE application_name = 'mailproxy' "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'").fetchone()


def _cut(port: int) -> None:
    """Shut down this process's socket bound to local TCP `port`, as the store's deadline
    does to a call past its time (`_pg_deadline._shut_down`)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:   # closed meanwhile
            continue
        with sock:
            if sock.family == socket.AF_INET and sock.getsockname()[1] == port:
                sock.shutdown(socket.SHUT_RDWR)
                return
    raise AssertionError(f"no socket of this process on port {port}")


def _hold_commits(dsn: str) -> psycopg.Connection:
    """COMMITs of messages wait for the advisory lock the returned connection holds."""
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(HOLD_COMMIT)
    locker = psycopg.connect(dsn, autocommit=True)
    locker.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
    return locker


def _cut_when_held(dsn: str) -> int:
    """Once a COMMIT is held, cut the gateway's connection to it; the backend's pid."""
    pid, port = polling.wait_for(lambda: _held_commit(dsn), "the APPEND's COMMIT held")
    _cut(port)
    return pid


def _drafts(client: Raw) -> list[bytes]:
    assert client.cmd("SELECT Drafts")[1].split()[1] == b"OK"
    return client.cmd("UID SEARCH ALL")[0]


def _append_held(client: Raw, dsn: str, while_held) -> bytes:
    """APPEND to Drafts with its COMMIT held and cut, `while_held(pid, locker)` then; the
    APPEND's tagged answer."""
    locker = _hold_commits(dsn)
    try:
        client.n += 1
        tag = b"t%d" % client.n
        client.sock.sendall(tag + b" APPEND Drafts {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        while_held(_cut_when_held(dsn), locker)
        while not (line := client.file.readline()).startswith(tag + b" "):
            assert line, "connection closed"
        return line.rstrip(b"\r\n")
    finally:
        locker.close()


async def _scenario(dovecot, tmp_path, nursery, dsn: str, while_held) -> tuple[bytes, list[bytes]]:
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=dsn,
                            store_query_timeout=BOUND, poll_interval="600s")
    await gateway.start(nursery)
    try:
        def run() -> tuple[bytes, list[bytes]]:
            client = Raw(gateway.port, user, password)
            answer = _append_held(client, dsn, while_held)
            stored = _drafts(client)
            client.close()
            return answer, stored

        return await trio.to_thread.run_sync(run)
    finally:
        await gateway.stop()


async def test_a_commit_the_frozen_server_runs_after_the_cut_is_answered_ok(
        dovecot, dovecot_root, tmp_path, nursery):
    try:
        server = start_postgres(dovecot_root)
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        dsn = server.fresh_dsn()

        def freeze_then_resume(pid: int, locker: psycopg.Connection) -> None:
            with frozen(server_processes(server.data)):
                locker.close()   # the server reads this, and lets the COMMIT go, once resumed

        answer, stored = await _scenario(dovecot, tmp_path, nursery, dsn, freeze_then_resume)
        assert re.fullmatch(rb"t2 OK \[APPENDUID \d+ 1\] APPEND completed\.", answer), answer
        assert stored == [b"* SEARCH 1"]
    finally:
        server.stop()


async def test_a_commit_the_server_rolled_back_after_the_cut_is_answered_no(
        dovecot, tmp_path, nursery, pg_dsn):
    def end_it(pid: int, locker: psycopg.Connection) -> None:
        assert locker.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]

    answer, stored = await _scenario(dovecot, tmp_path, nursery, pg_dsn, end_it)
    assert answer.split(b" ", 2)[1].startswith(b"NO"), answer
    assert answer.split(b" ", 2)[2].startswith(b"[UNAVAILABLE]"), answer
    assert stored == [b"* SEARCH"]


async def test_a_commit_whose_outcome_stays_unknown_is_answered_within_the_one_bound(pg_dsn):
    timeout = 12.0   # the append reaches its COMMIT well within the first 9 s, even at load 20
    store = await open_postgres(pg_dsn, query_timeout=timeout)
    try:
        account = await store.ensure_account("up", "user")
        drafts = await store.get_mailbox(account.id, "Drafts")
        assert drafts is not None
        deadlines: list[float] = []
        call = store._deadlines.call

        @contextlib.contextmanager
        def recorded(*args):
            with call(*args) as watch:
                deadlines.append(watch.deadline)
                yield watch

        store._deadlines.call = recorded   # type: ignore[method-assign]
        locker = await trio.to_thread.run_sync(_hold_commits, pg_dsn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, _cut_when_held, pg_dsn)
                with pytest.raises(StoreUnavailable, match="did not say whether"):
                    await store.append(drafts.id, MESSAGE)
        finally:
            locker.close()
        # the statements and COMMIT got the bound's first share, the doubt the rest: the call
        # answered by the end of its one store_query_timeout
        work, doubt = deadlines
        assert doubt - work == pytest.approx(timeout * SETTLE_SHARE, abs=1e-6)
    finally:
        await store.close()
