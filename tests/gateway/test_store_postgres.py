"""What only the PostgreSQL store has to prove: several processes (here: several store objects,
each with its own connection pool) on one database, migrations under the advisory lock, and
failures that are refusals. The behaviour both stores share is tested in test_store.py."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest
import trio
import yaml

from proxy import config as config_mod
from proxy.gateway.service import open_configured_store
from proxy.store import FlagMode, IngestItem, StoreError, StoreFailure, _pg_notify, open_store
from proxy.store.postgres import SCHEMA_VERSION
from support.dovecot import free_ports
from support.polling import TIMEOUT

from .helpers import check_migration_4_sync_status, config_dict, postgres_at_schema

WHEN = dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone.utc)


def mail(n: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (n, n)


async def open_many(url: str, count: int, **timing: float) -> list:
    stores: list = [None] * count

    async def one(i: int) -> None:
        stores[i] = await open_store(url, **timing)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return stores


async def test_replicas_starting_together_migrate_once(pg_dsn):
    stores = await open_many(pg_dsn, 4)
    try:
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        accounts = [await s.ensure_account("up", "alice") for s in stores]
        assert len({a.id for a in accounts}) == 1
    finally:
        for s in stores:
            await s.close()


async def test_newer_schema_is_refused(pg_dsn):
    s = await open_store(pg_dsn)
    await s.close()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this program"):
        await open_store(pg_dsn)


async def test_concurrent_flag_changes_from_two_replicas_are_all_kept(pg_dsn):
    a, b = await open_many(pg_dsn, 2)
    try:
        account = await a.ensure_account("up", "alice")
        inbox = await a.get_mailbox(account.id, "INBOX")
        uid = await a.append(inbox.id, mail(1))
        start = await a.highest_modseq(inbox.id)

        async def add(store, keyword: str) -> None:
            await store.store_flags(inbox.id, [uid], [keyword], FlagMode.ADD)

        keywords = [f"k{i}" for i in range(20)]
        async with trio.open_nursery() as nursery:
            for i, keyword in enumerate(keywords):
                nursery.start_soon(add, (a, b)[i % 2], keyword)
        [meta] = await b.messages(inbox.id)
        assert meta.flags == frozenset(keywords)
        # one MODSEQ per change, each logged once, in commit order
        changes = await b.changes_since(inbox.id, start)
        assert [c.modseq for c in changes] == list(range(start + 1, start + 21))
        assert meta.modseq == start + 20
    finally:
        await a.close()
        await b.close()


async def test_concurrent_ingest_of_the_same_uidls_stores_each_once(pg_dsn):
    a, b = await open_many(pg_dsn, 2)
    try:
        account = await a.ensure_account("up", "alice")
        items = [IngestItem(f"u{i}", mail(i), WHEN) for i in range(30)]
        results: dict[str, list] = {}

        async def ingest(name: str, store, batch) -> None:
            got = []
            for start in range(0, len(batch), 5):
                got += await store.ingest_many(account.id, batch[start:start + 5])
            results[name] = got

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest, "a", a, items)
            nursery.start_soon(ingest, "b", b, items[::-1])
        inbox = await a.get_mailbox(account.id, "INBOX")
        meta = await a.messages(inbox.id)
        assert sorted(m.pop3_uidl for m in meta) == sorted(i.uidl for i in items)
        assert [m.uid for m in meta] == list(range(1, 31))
        given = [u for u in results["a"] + results["b"] if u is not None]
        assert sorted(given) == list(range(1, 31))
        for m in meta:
            assert await a.body(m) == mail(int(m.pop3_uidl[1:]))
    finally:
        await a.close()
        await b.close()


async def test_opposite_moves_do_not_deadlock(pg_dsn):
    a, b = await open_many(pg_dsn, 2)
    try:
        account = await a.ensure_account("up", "alice")
        inbox = await a.get_mailbox(account.id, "INBOX")
        archive = await a.get_mailbox(account.id, "Archive")
        for i in range(10):
            await a.append(inbox.id, mail(i))
            await a.append(archive.id, mail(100 + i))

        async def move_all(store, src, dst) -> None:
            for _ in range(10):
                uids = [m.uid for m in await store.messages(src.id)][:1]
                await store.move(src.id, uids, dst.id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move_all, a, inbox, archive)
            nursery.start_soon(move_all, b, archive, inbox)
        total = len(await a.messages(inbox.id)) + len(await a.messages(archive.id))
        assert total == 20
    finally:
        await a.close()
        await b.close()


async def test_unreachable_server_is_a_store_failure_without_the_password(postgres):
    [port] = free_ports(1)
    url = f"postgresql://mailproxy:s3cr3t-pw@127.0.0.1:{port}/nothing?connect_timeout=2"
    with pytest.raises(StoreFailure) as info:
        await open_store(url)
    assert "s3cr3t-pw" not in str(info.value)
    assert "Connection refused" in str(info.value)
    assert f'connection to server at "127.0.0.1", port {port} failed' in str(info.value)
    assert "\n" not in str(info.value)


async def test_password_from_the_config_secret_not_the_url(postgres, pg_dsn, monkeypatch):
    url = f"postgresql://{postgres.user}@{pg_dsn.split('@', 1)[1]}"
    monkeypatch.setenv("MAILPROXY_TEST_PG_PASSWORD", postgres.password)
    cfg = config_dict(1, url)
    cfg["gateway"].update(store_password={"env": "MAILPROXY_TEST_PG_PASSWORD"}, store_pool_size=3)
    config = config_mod.loads(yaml.safe_dump(cfg))
    assert postgres.password not in repr(config.gateway)
    s = await open_configured_store(config.gateway)
    assert (await s.ensure_account("up", "alice")).id == 1
    await s.close()
    cfg["gateway"].pop("store_password")
    with pytest.raises(StoreFailure, match="password"):
        await open_configured_store(config_mod.loads(yaml.safe_dump(cfg)).gateway)


def test_config_refuses_a_password_for_sqlite_and_a_bad_pool_size(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILPROXY_TEST_PG_PASSWORD", "x")
    cfg = config_dict(1, str(tmp_path / "s.db"))
    cfg["gateway"].update(store_password={"env": "MAILPROXY_TEST_PG_PASSWORD"}, store_pool_size=0)
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(yaml.safe_dump(cfg))
    text = "\n".join(str(e) for e in info.value.errors)
    assert "only a postgresql:// store takes a password" in text
    assert "expected 1 to 1000 connections" in text


def test_replica_timing_settings_have_defaults_and_a_lease_of_a_few_acks_is_refused(tmp_path):
    cfg = config_dict(1, str(tmp_path / "s.db"))
    gateway = config_mod.loads(yaml.safe_dump(cfg)).gateway
    assert (gateway.store_ack_interval, gateway.store_replica_lease) == (2.0, 60.0)
    cfg["gateway"].update(store_ack_interval="500ms", store_replica_lease="2.5s")
    gateway = config_mod.loads(yaml.safe_dump(cfg)).gateway
    assert (gateway.store_ack_interval, gateway.store_replica_lease) == (0.5, 2.5)
    for ack, lease, wrong, message in (
            ("2s", "9s", "store_replica_lease", "expected at least 5 times store_ack_interval (10s)"),
            ("0s", "60s", "store_ack_interval", "expected 10ms to 60s")):
        cfg["gateway"].update(store_ack_interval=ack, store_replica_lease=lease)
        with pytest.raises(config_mod.ConfigError) as info:
            config_mod.loads(yaml.safe_dump(cfg))
        [error] = info.value.errors
        assert f"gateway.{wrong}" in str(error) and message in str(error), str(error)


async def test_open_store_refuses_a_lease_of_a_few_acks(pg_dsn):
    with pytest.raises(ValueError, match="at least 5 ack intervals"):
        await open_store(pg_dsn, ack_interval=2, replica_lease=8)


class Collected:
    """A `follow_changes` feed (proxy/store/_pg_notify.Feed) that records (mailbox, kind, uid,
    modseq) of others' changes, the holds of its own expunges and gone mailboxes; `pins` are
    the bodies its pretend sessions still show."""

    def __init__(self):
        self.items: list[tuple[int, str, int, int]] = []
        self.held: list[tuple[int, int]] = []
        self.gone_ids: list[int] = []
        self.pins: set[int] = set()
        self.flags: dict = {}
        self.event = trio.Event()

    def _wake(self) -> None:
        self.event.set()
        self.event = trio.Event()

    async def changed(self, account_id: int, mailbox_id: int, changes, flags) -> None:
        self.items += [(mailbox_id, c.kind.value, c.uid, c.modseq) for c in changes]
        self.flags.update(flags)
        self._wake()

    def hold(self, account_id: int, mailbox_id: int, uids) -> None:
        self.held += [(mailbox_id, uid) for uid in uids]
        self._wake()

    def gone(self, account_id: int, mailbox_id: int) -> None:
        self.gone_ids.append(mailbox_id)
        self._wake()

    def pinned(self) -> set[int]:
        return set(self.pins)

    async def until(self, predicate) -> None:
        with trio.fail_after(TIMEOUT):
            while not predicate():
                await self.event.wait()

    async def wait_for(self, count: int) -> None:
        await self.until(lambda: len(self.items) >= count)


async def test_feed_delivers_other_processes_changes_and_catches_up_after_a_gap(pg_dsn, nursery):
    here, there = await open_many(pg_dsn, 2)
    account = await there.ensure_account("up", "alice")
    inbox = await there.get_mailbox(account.id, "INBOX")
    got = Collected()
    with trio.fail_after(TIMEOUT):
        await nursery.start(here.follow_changes, got)
    start = await there.highest_modseq(inbox.id)
    await here.append(inbox.id, mail(0))                     # own change: not delivered
    uid = await there.append(inbox.id, mail(1))
    await got.wait_for(1)
    assert got.items == [(inbox.id, "append", uid, start + 2)]

    # The listening connection dies; changes made meanwhile arrive after the reconnect.
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'mailproxy-listen' AND pid <> pg_backend_pid()")
    await there.store_flags(inbox.id, [uid], ["\\Seen"], FlagMode.ADD)
    await there.expunge(inbox.id, [uid])
    await got.wait_for(3)
    assert got.items[1:] == [(inbox.id, "flags", uid, start + 3),
                             (inbox.id, "expunge", uid, start + 4)]
    last = await there.append(inbox.id, mail(2))
    await got.wait_for(4)
    assert len(got.items) == 4       # nothing delivered twice
    result = await there.store_flags(inbox.id, [last], ["$Done"], FlagMode.ADD)
    await got.wait_for(5)            # the current flags come with the log: no second read
    assert got.flags[last] == (frozenset({"$Done"}), result.updated[0].modseq)
    await here.close()
    await there.close()


async def test_migration_2_keeps_what_was_subscribed(pg_dsn):
    """Issue 17: a database of schema 1 (subscriptions as a mailbox column) keeps exactly the
    names whose mailbox was subscribed."""

    with postgres_at_schema(pg_dsn, 1) as conn:
        conn.execute("INSERT INTO accounts(id, upstream, username) VALUES (1, 'up', 'old')")
        conn.cursor().executemany(
            "INSERT INTO mailboxes(account_id, name, uidvalidity, subscribed) VALUES (1, %s, 7, %s)",
            [("INBOX", True), ("Work", False), ("Lists/ietf", True)])
    s = await open_store(pg_dsn)
    try:
        assert await s.subscriptions(1) == ["INBOX", "Lists/ietf"]
        assert [b.name for b in await s.list_mailboxes(1)] == ["INBOX", "Lists/ietf", "Work"]
    finally:
        await s.close()


async def test_migration_4_adds_empty_sync_status(pg_dsn):
    await check_migration_4_sync_status(pg_dsn)


# ---- bodies of expunged messages across replicas (proxy/store/_pg_bodies.py) -------------------

async def wait_acks(store, count: int = 2) -> None:
    """Until the store's follower has acked (and swept) `count` more times."""
    target = store.follower.acked + count
    with trio.fail_after(TIMEOUT):
        while store.follower.acked < target:
            await store.follower.ack_event.wait()


def body_exists(url: str, body_id: int) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM bodies WHERE id = %s", (body_id,)).fetchone() is not None


async def test_a_body_another_replica_still_shows_is_kept_until_it_lets_go(pg_dsn, nursery):
    """RFC 2180 4.1.1 across replicas: `here` has a session showing the message `there`
    expunges; `there` collecting at once, and both sweeping, keep the body until `here` has
    delivered the expunge, pinned the body, and then dropped the pin (its session sent the
    EXPUNGE); then it is swept."""
    here, there = await open_many(pg_dsn, 2, ack_interval=0.05)
    account = await there.ensure_account("up", "alice")
    inbox = await there.get_mailbox(account.id, "INBOX")
    uid = await there.append(inbox.id, mail(1))
    [meta] = await there.messages(inbox.id)
    got = Collected()
    original = got.changed

    async def session_shows_it(account_id, mailbox_id, changes, flags) -> None:
        if any(c.kind.value == "expunge" and c.uid == uid for c in changes):
            got.pins.add(meta.body_id)   # a view still showing the message pins its body
        await original(account_id, mailbox_id, changes, flags)

    got.changed = session_shows_it
    with trio.fail_after(TIMEOUT):
        await nursery.start(here.follow_changes, got)
    await there.expunge(inbox.id, [uid])
    await there.collect_bodies([meta.body_id])   # `there`'s own sessions do not show it
    assert await there.body(meta) == mail(1)
    await got.until(lambda: got.pins)
    await wait_acks(here, 3)                      # acked past the expunge, pinned, swept
    await there.collect_bodies([meta.body_id])
    assert await here.body(meta) == mail(1)
    assert body_exists(pg_dsn, meta.body_id)
    got.pins.clear()                              # `here`'s session sent the EXPUNGE
    await wait_acks(here, 2)
    assert not body_exists(pg_dsn, meta.body_id)
    with pytest.raises(StoreError, match="no longer exists"):
        await here.body(meta)
    await here.close()
    await there.close()


async def test_own_expunges_are_held_from_the_log(pg_dsn, nursery):
    """The follower hands this process's own EXPUNGEs back as holds (views pin what they still
    show even if the in-process publication is late), never as changes."""
    [here] = await open_many(pg_dsn, 1, ack_interval=0.05)
    account = await here.ensure_account("up", "alice")
    inbox = await here.get_mailbox(account.id, "INBOX")
    uid = await here.append(inbox.id, mail(1))
    got = Collected()
    with trio.fail_after(TIMEOUT):
        await nursery.start(here.follow_changes, got)
    await here.expunge(inbox.id, [uid])
    await got.until(lambda: got.held)
    assert got.held == [(inbox.id, uid)]
    assert got.items == []
    await here.close()


async def test_bodies_left_by_a_dead_process_are_swept(pg_dsn, nursery):
    """A process that expunged and died before collecting (or never collects) leaves orphans:
    a live replica's sweep takes them once every live replica is past them. A replica row
    whose lease ran out (SIGKILL) no longer holds anything back; a live one that has not acked
    past the expunge does."""
    here, dead = await open_many(pg_dsn, 2, ack_interval=0.05, replica_lease=30)
    account = await dead.ensure_account("up", "alice")
    inbox = await dead.get_mailbox(account.id, "INBOX")
    await dead.append(inbox.id, mail(1))
    [meta] = await dead.messages(inbox.id)
    await dead.expunge(inbox.id, [meta.uid])
    await dead.close()                                  # never collected
    with psycopg.connect(pg_dsn) as conn:               # a replica that stopped acking
        conn.execute("INSERT INTO replicas(origin, seen_at, horizon) VALUES ('stuck', now(), 0)")
        conn.execute("INSERT INTO pins(origin, body_id) VALUES ('stuck', %s)", (meta.body_id,))
    got = Collected()
    with trio.fail_after(TIMEOUT):
        await nursery.start(here.follow_changes, got)
    await wait_acks(here, 3)
    assert body_exists(pg_dsn, meta.body_id)            # 'stuck' is live and behind
    with psycopg.connect(pg_dsn) as conn:               # ... until its lease runs out
        conn.execute("UPDATE replicas SET seen_at = now() - interval '29 seconds' "
                     "WHERE origin = 'stuck'")
    await wait_acks(here, 2)
    assert body_exists(pg_dsn, meta.body_id)            # within gateway.store_replica_lease
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE replicas SET seen_at = now() - interval '31 seconds' "
                     "WHERE origin = 'stuck'")
    await wait_acks(here, 2)
    assert not body_exists(pg_dsn, meta.body_id)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT origin FROM replicas").fetchall() == [(here.origin,)]
        assert conn.execute("SELECT count(*) FROM pins").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM orphans").fetchone() == (0,)
    await here.close()


async def test_feed_reports_mailboxes_deleted_or_renamed_elsewhere(pg_dsn, nursery):
    here, there = await open_many(pg_dsn, 2)
    account = await there.ensure_account("up", "alice")
    for name in ("Work", "Work/2024", "Old"):
        await there.create_mailbox(account.id, name)
    ids = {m.name: m.id for m in await there.list_mailboxes(account.id)}
    got = Collected()
    with trio.fail_after(TIMEOUT):
        await nursery.start(here.follow_changes, got)
    await here.delete_mailbox(account.id, "Archive")    # own: the process told its sessions
    await there.rename_mailbox(account.id, "Work", "Job")
    await got.until(lambda: len(got.gone_ids) == 2)
    assert sorted(got.gone_ids) == sorted([ids["Work"], ids["Work/2024"]])
    await there.delete_mailbox(account.id, "Old")
    await got.until(lambda: len(got.gone_ids) == 3)
    assert got.gone_ids[2] == ids["Old"]
    await here.close()
    await there.close()


async def test_feed_catches_up_renames_and_deletions_missed_in_a_gap(pg_dsn, nursery, monkeypatch):
    """Issue 15: a RENAME made while the LISTEN connection was down is reported gone after the
    reconnect, as a missed DELETE is; a rename this process made meanwhile is not."""
    here, there = await open_many(pg_dsn, 2)
    account = await there.ensure_account("up", "alice")
    for name in ("Work", "Work/2024", "Old", "Mine"):
        await there.create_mailbox(account.id, name)
    ids = {m.name: m.id for m in await there.list_mailboxes(account.id)}
    lost = threading.Event()          # the follower noticed and tries to connect again
    reconnect = threading.Event()     # ... which it may only once the gap is made
    connect = _pg_notify.ChangeFollower._connect

    def gated_connect(self):
        if self.acked:
            lost.set()
            reconnect.wait(TIMEOUT)
        return connect(self)

    monkeypatch.setattr(_pg_notify.ChangeFollower, "_connect", gated_connect)
    got = Collected()
    with trio.fail_after(TIMEOUT):
        await nursery.start(here.follow_changes, got)
    follower = here.follower
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'mailproxy-listen' AND pid <> pg_backend_pid()")
    try:
        assert await trio.to_thread.run_sync(lost.wait, TIMEOUT)
        await there.rename_mailbox(account.id, "Work", "Job")     # missed: no listener
        await there.delete_mailbox(account.id, "Old")
        await here.rename_mailbox(account.id, "Mine", "Ours")    # own: its sessions were told
    finally:
        reconnect.set()
    with trio.fail_after(TIMEOUT):
        await follower.connected.wait()       # set after the catch-up
    assert sorted(got.gone_ids) == sorted([ids["Work"], ids["Work/2024"], ids["Old"]])
    acked = follower.acked
    await follower._catch_up()                # the next periodic catch-up reports nothing again
    assert sorted(got.gone_ids) == sorted([ids["Work"], ids["Work/2024"], ids["Old"]])
    assert follower.acked == acked and got.items == []
    await here.close()
    await there.close()


async def test_one_statement_reads_run_in_autocommit_and_leave_none(pg_dsn):
    """Issue 15 (SELECT speed): a read-only one-statement call (mailbox lookup, HIGHESTMODSEQ)
    runs without BEGIN/COMMIT and gives the connection back in transaction mode, so later
    writes are still one transaction each."""
    store = await open_store(pg_dsn)
    account = await store.ensure_account("up", "u")
    inbox = await store.get_mailbox(account.id, "INBOX")    # read=True
    assert await store.highest_modseq(inbox.id) == inbox.highest_modseq
    with store._pool.connection() as c:
        assert c.autocommit is False
    uid = await store.append(inbox.id, mail(1))
    await store.store_flags(inbox.id, [uid], ["\\Seen"], FlagMode.ADD)
    assert [m.flags for m in await store.messages(inbox.id)] == [frozenset({"\\Seen"})]
    await store.close()
