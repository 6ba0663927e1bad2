"""The POP3 fetcher against a real Dovecot pop3d (and, for what Dovecot cannot do, a tiny fake).
Tests taking `store_url` run on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import poplib
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import yaml

from proxy import config as config_mod
from proxy.gateway.fetcher import sync_account
from proxy.session.failures import Failure
from proxy.session.upstream import UpstreamError
from proxy.store import KeyRing, open_store
from support.polling import wait_for

from .helpers import (
    config_dict,
    corpus,
    digest,
    make_config,
    stored,
    tls_dovecot,
    upstream_count,
    upstream_messages,
)

WORKER = Path(__file__).with_name("sync_worker.py")


@pytest.fixture(scope="module")
def mixed_mail() -> list[bytes]:
    return corpus(500)


def deliver_all(dovecot, user: str, messages: list[bytes]) -> None:
    for message in messages:
        dovecot.deliver(user, message)


async def test_500_mixed_messages_byte_identical(dovecot, user, tmp_path, store_url, mixed_mail):
    name, password = user
    deliver_all(dovecot, name, mixed_mail)
    config = make_config(dovecot.pop3_port, store_url)
    store = await open_store(config.gateway.store)
    seen = []
    result = await sync_account(config, store, "dc", name, password,
                                progress=lambda *args: seen.append(args))
    assert result.new == 500 and result.deleted_upstream == 0
    upstream = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    got = await stored(store, name)
    assert set(got) == set(upstream)
    assert result.bytes == sum(len(b) for b in upstream.values())
    for uidl, body in upstream.items():
        assert got[uidl][1] == body, uidl
    assert sorted(uid for uid, _ in got.values()) == list(range(1, 501))
    assert seen[-1][:2] == (500, 500)

    # Nothing new: nothing fetched. `keep` left the upstream untouched.
    again = await sync_account(config, store, "dc", name, password)
    assert again.new == 0 and again.deleted_upstream == 0
    assert upstream_count(dovecot.host, dovecot.pop3_port, name, password) == 500

    # Another POP3 client deletes a message upstream: it stays in the store with its UID.
    pop = poplib.POP3(dovecot.host, dovecot.pop3_port)
    pop.user(name), pop.pass_(password)
    gone = pop.uidl(7).split()[2].decode()
    pop.dele(7)
    pop.quit()
    await sync_account(config, store, "dc", name, password)
    after = await stored(store, name)
    assert after[gone] == got[gone]
    assert {u: v[0] for u, v in after.items()} == {u: v[0] for u, v in got.items()}
    await store.close()


async def test_internaldate_from_received_then_date(dovecot, user, tmp_path, store_url):
    name, password = user
    dovecot.deliver(name, b"Received: from x by y; Tue, 2 Jan 2024 03:04:05 +0000\r\n"
                          b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: a\r\n\r\nA\r\n")
    dovecot.deliver(name, b"Date: Wed, 3 Jan 2024 10:00:00 +0200\r\nSubject: b\r\n\r\nB\r\n")
    dovecot.deliver(name, b"Subject: no date\r\n\r\nC\r\n")
    config = make_config(dovecot.pop3_port, store_url)
    store = await open_store(config.gateway.store)
    await sync_account(config, store, "dc", name, password)
    account = await store.ensure_account("dc", name)
    inbox = await store.get_mailbox(account.id, "INBOX")
    a, b, c = await store.messages(inbox.id)
    assert a.internaldate.isoformat() == "2024-01-02T03:04:05+00:00"
    assert b.internaldate.isoformat() == "2024-01-03T10:00:00+02:00"
    assert abs(c.internaldate.timestamp() - time.time()) < 60
    await store.close()


async def test_retention_delete_after_fetch(dovecot, user, tmp_path, store_url):
    name, password = user
    deliver_all(dovecot, name, corpus(60)[40:])
    upstream = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    key_file = tmp_path / "store.key"
    key_file.write_text(KeyRing.generate_line("k1") + "\n")
    config = make_config(dovecot.pop3_port, store_url, "delete-after-fetch",
                         str(key_file))
    store = await open_store(config.gateway.store, KeyRing.from_file(key_file))
    result = await sync_account(config, store, "dc", name, password)
    assert (result.new, result.deleted_upstream) == (20, 20)
    assert upstream_count(dovecot.host, dovecot.pop3_port, name, password) == 0
    got = await stored(store, name)
    assert {u: b for u, (_, b) in got.items()} == upstream
    dovecot.deliver(name, b"Subject: later\r\n\r\nlater\r\n")
    result = await sync_account(config, store, "dc", name, password)
    assert (result.new, result.deleted_upstream) == (1, 1)
    assert upstream_count(dovecot.host, dovecot.pop3_port, name, password) == 0
    assert len(await stored(store, name)) == 21
    await store.close()


async def test_retention_duration_deletes_only_old_enough(dovecot, user, tmp_path):
    name, password = user
    deliver_all(dovecot, name, corpus(50)[40:])
    path = str(tmp_path / "s.db")
    config = make_config(dovecot.pop3_port, path, "30d")
    store = await open_store(path)
    result = await sync_account(config, store, "dc", name, password)
    assert (result.new, result.deleted_upstream) == (10, 0)
    upstream = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    old = sorted(upstream)[:4]
    # Pretend four of them were fetched 31 days ago.
    await store.close()
    db = sqlite3.connect(path)
    db.executemany("UPDATE uidls SET fetched_at = fetched_at - 31 * 86400 WHERE uidl = ?",
                   [(u,) for u in old])
    db.commit()
    db.close()
    store = await open_store(path)
    result = await sync_account(config, store, "dc", name, password)
    assert (result.new, result.deleted_upstream) == (0, 4)
    left = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    assert set(left) == set(upstream) - set(old)
    assert set(await stored(store, name)) == set(upstream)
    # Already deleted upstream: not sent again.
    assert (await sync_account(config, store, "dc", name, password)).deleted_upstream == 0
    await store.close()


def test_keep_never_sends_dele(dovecot, user, tmp_path):
    name, password = user
    deliver_all(dovecot, name, corpus(45)[40:])
    config = make_config(dovecot.pop3_port, str(tmp_path / "s.db"))

    async def run():
        store = await open_store(config.gateway.store)
        for _ in range(2):
            await sync_account(config, store, "dc", name, password)
        await store.close()

    trio.run(run)
    assert upstream_count(dovecot.host, dovecot.pop3_port, name, password) == 5

    def logouts() -> list[str]:   # Dovecot writes them from another process, maybe after QUIT's +OK
        return [line for line in dovecot.log().splitlines()
                if f"pop3({name})" in line and "del=" in line]

    # three POP3 sessions: two syncs and upstream_count's
    wait_for(lambda: len(logouts()) >= 3, "Dovecot's logout lines of the three POP3 sessions")
    assert len(logouts()) == 3 and all("del=0/" in line for line in logouts()), logouts()


async def test_wrong_password_is_an_auth_error(dovecot, user, tmp_path):
    name, _ = user
    config = make_config(dovecot.pop3_port, str(tmp_path / "s.db"))
    store = await open_store(config.gateway.store)
    with pytest.raises(UpstreamError) as info:
        await sync_account(config, store, "dc", name, "wrong")
    assert info.value.failure is Failure.AUTH_REJECTED
    await store.close()


async def test_tls_implicit_and_starttls_with_verification(dovecot_factory, tmp_path):
    server, name, password, ca_pem = tls_dovecot(dovecot_factory, tmp_path)
    store = await open_store(str(tmp_path / "s.db"))
    for tls, port in (("implicit", server.pop3s_port), ("starttls", server.pop3_port)):
        config = make_config(port, str(tmp_path / "s.db"), tls=tls, ca_file=str(ca_pem))
        await sync_account(config, store, "dc", name, password)
    assert len(await stored(store, name)) == 1
    untrusted = make_config(server.pop3s_port, str(tmp_path / "s.db"), tls="implicit")
    with pytest.raises(UpstreamError) as info:
        await sync_account(untrusted, store, "dc", name, password)
    assert info.value.failure is Failure.TLS
    await store.close()


# ---- crash safety: SIGKILL the sync process at random moments ---------------------------------------

def _snapshot(path: str, user: str) -> dict[str, tuple[int, str]]:
    async def read():
        store = await open_store(path)
        try:
            return {u: (uid, digest(body)) for u, (uid, body) in (await stored(store, user)).items()}
        finally:
            await store.close()
    return trio.run(read)


def _next_line(proc: subprocess.Popen) -> bytes:
    """The worker's next stdout line (b"" once it exited); fails if it says nothing for a minute."""
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "the sync worker neither committed a batch nor exited in 60 s"
    return proc.stdout.readline()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(dovecot, user, tmp_path):
    """>= 20 SIGKILLs, each after a random number (0-4) of batch commits reported by the worker
    (0: during start-up), the mailbox growing by per_round messages (5 batches) each round, so
    every kill after a commit lands while the next batch is in flight."""
    name, password = user
    initial, per_round, max_rounds = 300, 25, 40
    messages = corpus(initial + per_round * max_rounds, seed=99)
    deliver_all(dovecot, name, messages[:initial])
    delivered = initial
    store_path = str(tmp_path / "crash.db")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(dovecot.pop3_port, store_path)))
    env = dict(os.environ, MAILPROXY_PASSWORD=password)
    command = [sys.executable, str(WORKER), "--config", str(config_file), name]
    rng = random.Random(20240517)
    uids: dict[str, int] = {}
    killed = killed_mid_ingest = 0
    for _ in range(max_rounds):
        if killed >= 20 and killed_mid_ingest >= 10:
            break
        deliver_all(dovecot, name, messages[delivered:delivered + per_round])
        delivered += per_round
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                bufsize=0)
        commits = 0
        for _ in range(rng.randint(0, 4)):
            if not _next_line(proc).startswith(b"committed"):
                break   # exited (or its final summary): nothing left to interrupt
            commits += 1
        was_killed = proc.poll() is None
        if was_killed:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        if not os.path.exists(store_path):
            continue
        snapshot = _snapshot(store_path, name)
        for uidl, (uid, _) in snapshot.items():
            assert uids.setdefault(uidl, uid) == uid, "UID of an already stored message changed"
        assert set(uids) == set(snapshot), "a stored message disappeared"
        if was_killed and commits and len(snapshot) < delivered:   # after a commit, before the end
            killed_mid_ingest += 1
    print(f"SIGKILLs: {killed}, of them mid-ingest: {killed_mid_ingest}, messages: {delivered}")
    assert killed >= 20 and killed_mid_ingest >= 10, (killed, killed_mid_ingest)
    final = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert b"fetched " in final.stdout
    upstream = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    snapshot = _snapshot(store_path, name)
    assert len(upstream) == delivered
    assert {u: d for u, (_, d) in snapshot.items()} == {u: digest(b) for u, b in upstream.items()}
    assert {u: uid for u, (uid, _) in snapshot.items() if u in uids} == uids


async def test_over_quota_ingest_keeps_mail_upstream_and_resumes(dovecot, user, store_url):
    """Issue 17, RFC 9208 spirit: what does not fit in gateway.quota is neither stored nor
    deleted upstream (even with delete-after-fetch); once space is freed the next sync gets it."""
    name, password = user
    bodies = [b"Subject: q%d\r\n\r\n%s\r\n" % (n, b"x" * 500) for n in range(5)]
    for body in bodies:
        dovecot.deliver(name, body)
    cfg = config_dict(dovecot.pop3_port, store_url, "delete-after-fetch")
    cfg["gateway"]["quota"] = {"messages": 3, "storage": "100KiB"}
    config = config_mod.loads(yaml.safe_dump(cfg))
    store = await open_store(store_url)
    try:
        result = await sync_account(config, store, "dc", name, password)
        assert (result.new, result.over_quota, result.deleted_upstream) == (3, 2, 3)
        assert sorted(b for _, b in (await stored(store, name)).values()) == sorted(bodies[:3])
        left = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
        assert sorted(left.values()) == sorted(bodies[3:])   # kept upstream, in order
        # full: the next sync does not even RETR them
        result = await sync_account(config, store, "dc", name, password)
        assert (result.new, result.over_quota, result.deleted_upstream) == (0, 2, 0)
        account = await store.ensure_account("dc", name)
        inbox = await store.get_mailbox(account.id, "INBOX")
        first = (await store.messages(inbox.id))[0]
        await store.expunge(inbox.id, [first.uid])   # the user frees one message's room
        result = await sync_account(config, store, "dc", name, password)
        assert (result.new, result.over_quota, result.deleted_upstream) == (1, 1, 1)
        assert await store.usage(account.id) == (sum(map(len, bodies[1:4])), 3)
        assert list(upstream_messages(dovecot.host, dovecot.pop3_port, name, password).values()) \
            == [bodies[4]]
    finally:
        await store.close()
