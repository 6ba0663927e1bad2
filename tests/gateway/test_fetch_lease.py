"""One fetcher per account across processes sharing a PostgreSQL store (the store's fetch lease):
a second process skips while the first fetches; the first SIGKILLed mid-ingest releases the
lease, and the next process finishes the job with nothing lost or duplicated. Real processes
(tests/gateway/sync_worker.py, the sync CLI slowed down and stalled after its first commit, so
the test never races it), real Dovecot, real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import yaml

from proxy.store import open_store
from proxy.store.postgres import FETCH_LEASE_SPACE, PostgresStore
from support.polling import wait_for

from .helpers import config_dict, corpus, digest, upstream_messages
from .test_fetcher import WORKER, _next_line, _snapshot, deliver_all


def _lease_held(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return bool(conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND classid = %s", (FETCH_LEASE_SPACE,)).fetchone()[0])


def test_one_fetcher_per_account_and_sigkill_releases_the_lease(dovecot, user, tmp_path, pg_dsn):
    name, password = user
    messages = corpus(300, seed=15)
    deliver_all(dovecot, name, messages)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(dovecot.pop3_port, pg_dsn)))
    # no pause per message: the first process stalls by itself (SYNC_WORKER_STALL_AFTER), and
    # the others are never killed
    env = dict(os.environ, MAILPROXY_PASSWORD=password, SYNC_WORKER_PAUSE_MS="0")
    command = [sys.executable, str(WORKER), "--config", str(config_file), name]

    # The first process commits one batch (5 messages) and then stalls, holding the lease with
    # the next batch in flight, until it is killed: no race with the machine's speed.
    first = subprocess.Popen(command, env=dict(env, SYNC_WORKER_STALL_AFTER="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    line = _next_line(first)
    if line != b"committed 5\n":
        first.kill()
        raise AssertionError(f"first sync said {line!r}: {first.communicate()[1].decode()[-2000:]}")
    # While it holds the lease a second process does not fetch.
    second = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert second.stdout.startswith(b"skipped: another process is fetching"), second.stdout
    assert first.poll() is None, "the stalled first sync ended before it was killed"
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    partial = _snapshot(pg_dsn, name)
    assert len(partial) == 5
    # PostgreSQL ends the dead process's sessions, and with them its lease.
    wait_for(lambda: not _lease_held(pg_dsn), "the dead process's lease to be released")
    third = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert third.returncode == 0, third.stderr.decode()[-2000:]
    summary = third.stdout.splitlines()[-1]    # after its "committed N" lines
    assert summary.startswith(b"fetched %d messages" % (len(messages) - len(partial))), summary
    upstream = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    final = _snapshot(pg_dsn, name)
    assert {u: d for u, (_, d) in final.items()} == {u: digest(b) for u, b in upstream.items()}
    assert sorted(uid for uid, _ in final.values()) == list(range(1, len(messages) + 1))
    assert {u: final[u] for u in partial} == partial     # what was stored kept its UID


async def test_the_lease_is_given_back_before_its_connection_closes(pg_dsn, monkeypatch):
    """The lease is given back before its block ends (pg_advisory_unlock), not left to the
    server's end of the connection, which comes a moment after the client closed it: under load
    a sync right after another in the same process (a login's kick after a poll) was skipped as
    if another process were fetching (seen in test_hostile_upstream at load 37). Checked where
    the race lies: whether the lock is still held when the lease's connection is closed."""
    held_at_close: list[bool] = []
    leased = PostgresStore._lease_connection

    def observed(self, key):
        conn = leased(self, key)
        if conn is not None:
            close = conn.close

            def observed_close():
                held_at_close.append(_lease_held(pg_dsn))
                close()
            conn.close = observed_close
        return conn

    monkeypatch.setattr(PostgresStore, "_lease_connection", observed)
    store = await open_store(pg_dsn)
    try:
        for _ in range(20):
            async with store.fetch_lease("dc", "again@example.com") as mine:
                assert mine
        assert held_at_close == [False] * 20
    finally:
        await store.close()
