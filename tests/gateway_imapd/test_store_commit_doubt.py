"""An APPEND whose COMMIT is on the wire when the store's connection is cut
(`gateway.store_query_timeout`, proxy/store/_pg_commit.py): the client is told what happened.

The COMMIT is held at the server by a deferred trigger waiting for an advisory lock the test
holds, so the cut lands exactly while the COMMIT is in flight. Then either the database
server freezes (SIGSTOP of every process, as test_store_frozen.py) with that COMMIT in its
hands and, once resumed, runs it: the client gets OK and the message is stored once (before,
it got NO [UNAVAILABLE] for a stored message, and a client retrying stored it twice); or the
held transaction is ended instead: NO [UNAVAILABLE], and nothing is stored. Real PostgreSQL,
real Dovecot, the gateway in-process."""

from __future__ import annotations

import contextlib
import logging
import re
import threading

import psycopg
import pytest
import trio

from proxy.logs import LOGGER_NAME
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


class Seen(logging.Handler):
    """Sets `event` when the gateway logs the event named `name`."""

    def __init__(self, name: str):
        super().__init__()
        self.name_, self.event = name, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.name_:
            self.event.set()


@contextlib.contextmanager
def logged(name: str):
    seen = Seen(name)
    logging.getLogger(LOGGER_NAME).addHandler(seen)
    try:
        yield seen.event
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(seen)


def _held_commits(dsn: str) -> list[int]:
    """The gateway's backends whose COMMIT waits for the test's advisory lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'mailproxy' "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'").fetchall()]


def _drafts(client: Raw) -> list[bytes]:
    assert client.cmd("SELECT Drafts")[1].split()[1] == b"OK"
    return client.cmd("UID SEARCH ALL")[0]


def _append_held(client: Raw, dsn: str, while_held) -> bytes:
    """APPEND to Drafts with its COMMIT held, `while_held(pid, locker)` once the store call has
    been cut; the APPEND's tagged answer."""
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(HOLD_COMMIT)
    locker = psycopg.connect(dsn, autocommit=True)
    try:
        locker.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        with logged("store_call_cut") as cut:
            client.n += 1
            tag = b"t%d" % client.n
            client.sock.sendall(tag + b" APPEND Drafts {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
            [pid] = polling.wait_for(lambda: _held_commits(dsn), "the APPEND's COMMIT held")
            assert cut.wait(polling.TIMEOUT), "the gateway never cut the held COMMIT"
            while_held(pid, locker)
        while not (line := client.file.readline()).startswith(tag + b" "):
            assert line, "connection closed"
        return line.rstrip(b"\r\n")
    finally:
        locker.close()


async def _scenario(dovecot, tmp_path, nursery, dsn: str, while_held) -> tuple[bytes, list[bytes]]:
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=dsn,
                            store_query_timeout="5s", poll_interval="600s")
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
