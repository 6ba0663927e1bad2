"""Store tests, each run on SQLite and on PostgreSQL (the `store`/`store_url` fixtures of
tests/gateway/conftest.py); no Dovecot needed. Tests of one implementation's files say so."""

from __future__ import annotations

import datetime as dt
import pathlib
import sqlite3
import time

import psycopg
import pytest

from proxy.store import (
    DEFAULT_MAILBOXES,
    INBOX,
    ChangeKind,
    FlagMode,
    IngestItem,
    KeyRing,
    MailboxExists,
    MailboxNotFound,
    StoreError,
    StoreKeyError,
    open_store,
)
from proxy.store.sqlite import SCHEMA_VERSION

from .helpers import check_migration_4_sync_status, sqlite_at_schema

WHEN = dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def mail(n: int, extra: bytes = b"") -> bytes:
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: message %d\r\n\r\n"
            b"body %d\r\n" % (n, n)) + extra


async def inbox_of(store, user="alice"):
    account = await store.ensure_account("up", user)
    return account, await store.get_mailbox(account.id, "INBOX")


async def test_new_account_has_default_mailboxes(store):
    account = await store.ensure_account("up", "alice")
    boxes = {mb.name: mb for mb in await store.list_mailboxes(account.id)}
    assert set(boxes) == set(DEFAULT_MAILBOXES)
    assert boxes["Sent"].special_use == "\\Sent" and boxes["INBOX"].special_use is None
    assert len({mb.uidvalidity for mb in boxes.values()}) == len(boxes)
    assert (await store.ensure_account("up", "alice")).id == account.id
    assert (await store.get_mailbox(account.id, "inbox")).name == INBOX


async def test_uids_strictly_increase_and_are_never_reused(store):
    _, inbox = await inbox_of(store)
    uids = [await store.append(inbox.id, mail(i)) for i in range(3)]
    assert uids == [1, 2, 3]
    assert await store.expunge(inbox.id, [3]) == [3]
    assert await store.append(inbox.id, mail(4)) == 4
    meta = await store.messages(inbox.id)
    assert [m.uid for m in meta] == [1, 2, 4]
    assert (await store.get_mailbox(inbox.account_id, INBOX)).uidnext == 5


async def test_uidvalidity_and_data_survive_reopen(store_url):
    path = store_url
    s = await open_store(path)
    account, inbox = await inbox_of(s)
    await s.append(inbox.id, mail(1), ["\\Seen"], WHEN)
    await s.close()
    s = await open_store(path)
    again = await s.get_mailbox(account.id, INBOX)
    assert again.uidvalidity == inbox.uidvalidity
    [meta] = await s.messages(inbox.id)
    assert meta.flags == {"\\Seen"} and meta.internaldate == WHEN
    assert await s.body(meta) == mail(1)
    assert meta.size == len(mail(1))
    await s.close()


async def test_migrations_from_empty_file_and_reopen(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    s = await open_store(str(path))
    await s.close()
    s = await open_store(str(path))
    await s.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_modseq_and_change_log(store):
    account, inbox = await inbox_of(store)
    start = await store.highest_modseq(inbox.id)
    uid = await store.append(inbox.id, mail(1))
    result = await store.store_flags(inbox.id, [uid], ["\\seen", "work"], FlagMode.ADD)
    [update] = result.updated
    assert update.flags == {"\\Seen", "work"} and update.changed
    await store.expunge(inbox.id, [uid])
    changes = await store.changes_since(inbox.id, start)
    assert [(c.kind, c.uid) for c in changes] == [
        (ChangeKind.APPEND, uid), (ChangeKind.FLAGS, uid), (ChangeKind.EXPUNGE, uid)]
    assert [c.modseq for c in changes] == [start + 1, start + 2, start + 3]
    assert await store.highest_modseq(inbox.id) == start + 3
    assert await store.changes_since(inbox.id, start + 3) == []


async def test_flag_modes_and_unchanged_since(store):
    _, inbox = await inbox_of(store)
    a = await store.append(inbox.id, mail(1), ["\\Seen"])
    b = await store.append(inbox.id, mail(2))
    res = await store.store_flags(inbox.id, [a, b, 99], ["\\Flagged"], FlagMode.ADD)
    assert [(u.uid, u.flags) for u in res.updated] == [(a, {"\\Seen", "\\Flagged"}),
                                                        (b, {"\\Flagged"})]
    res = await store.store_flags(inbox.id, [a], ["\\Seen"], FlagMode.REMOVE)
    assert res.updated[0].flags == {"\\Flagged"}
    res = await store.store_flags(inbox.id, [a], ["$Junk"], FlagMode.REPLACE)
    assert res.updated[0].flags == {"$Junk"}
    modseq_a = res.updated[0].modseq
    before = await store.highest_modseq(inbox.id)
    res = await store.store_flags(inbox.id, [a], ["$Junk"], FlagMode.ADD)
    assert not res.updated[0].changed and await store.highest_modseq(inbox.id) == before
    # b's modseq is older than a's: UNCHANGEDSINCE between them touches b only.
    res = await store.store_flags(inbox.id, [a, b], ["\\Answered"], FlagMode.ADD,
                                  unchanged_since=modseq_a - 1)
    assert res.modified == [a] and [u.uid for u in res.updated] == [b]


async def test_ingest_is_idempotent_by_uidl(store):
    account, inbox = await inbox_of(store)
    assert await store.ingest(account.id, "u1", mail(1), WHEN) == 1
    assert await store.ingest(account.id, "u1", mail(1), WHEN) is None
    got = await store.ingest_many(account.id, [IngestItem("u2", mail(2), WHEN),
                                               IngestItem("u1", mail(1), WHEN),
                                               IngestItem("u3", mail(3), WHEN),
                                               IngestItem("u3", mail(3), WHEN)])
    assert got == [2, None, 3, None]
    assert await store.known_uidls(account.id) == {"u1", "u2", "u3"}
    # An expunged message stays known: ingest never brings it back.
    await store.expunge(inbox.id, [1])
    assert await store.ingest(account.id, "u1", mail(1), WHEN) is None
    meta = await store.messages(inbox.id)
    assert [(m.uid, m.pop3_uidl) for m in meta] == [(2, "u2"), (3, "u3")]


async def test_retention_bookkeeping(store):
    account, _ = await inbox_of(store)
    await store.ingest(account.id, "u1", mail(1), WHEN)
    await store.ingest(account.id, "u2", mail(2), WHEN)
    assert set(await store.fetched_at(account.id)) == {"u1", "u2"}
    await store.mark_deleted_upstream(account.id, ["u1"])
    assert set(await store.fetched_at(account.id)) == {"u2"}
    assert await store.known_uidls(account.id) == {"u1", "u2"}
    rows = await store.uidl_rows(account.id)   # (both in one read: None is gone upstream)
    assert rows == {"u1": None, "u2": (await store.fetched_at(account.id))["u2"]}


async def test_copy_move_expunge(store):
    account, inbox = await inbox_of(store)
    archive = await store.get_mailbox(account.id, "Archive")
    uids = [await store.append(inbox.id, mail(i), ["\\Seen"]) for i in range(3)]
    assert await store.copy(inbox.id, [uids[0], uids[2]], archive.id) == [(1, 1), (3, 2)]
    assert await store.move(inbox.id, [uids[1]], archive.id) == [(2, 3)]
    assert [m.uid for m in await store.messages(inbox.id)] == [1, 3]
    copied = await store.messages(archive.id)
    assert [m.flags for m in copied] == [{"\\Seen"}] * 3
    assert [await store.body(m) for m in copied] == [mail(0), mail(2), mail(1)]
    # Bodies are shared: expunging the original keeps the copy readable.
    await store.expunge(inbox.id, [1])
    assert await store.body(copied[0]) == mail(0)
    kinds = [c.kind for c in await store.changes_since(inbox.id, 0)]
    assert kinds.count(ChangeKind.EXPUNGE) == 2


async def test_mailbox_create_delete_rename(store):
    account, _ = await inbox_of(store)
    await store.create_mailbox(account.id, "Work")
    inferior = await store.create_mailbox(account.id, "Work/2024")
    with pytest.raises(MailboxExists):
        await store.create_mailbox(account.id, "Work")
    old = await store.get_mailbox(account.id, "Work")
    uid = await store.append(old.id, mail(1))
    await store.rename_mailbox(account.id, "Work", "Jobs")
    renamed = await store.get_mailbox(account.id, "Jobs")
    assert renamed.id == old.id and renamed.uidvalidity == old.uidvalidity
    moved = await store.get_mailbox(account.id, "Jobs/2024")   # inferiors move with it (6.3.5)
    assert (moved.id, moved.uidvalidity) == (inferior.id, inferior.uidvalidity), moved
    assert await store.get_mailbox(account.id, "Work") is None
    assert await store.get_mailbox(account.id, "Work/2024") is None
    await store.delete_mailbox(account.id, "Jobs")
    assert await store.get_mailbox(account.id, "Jobs") is None
    # Re-creating a name gives a new UIDVALIDITY (RFC 3501 2.3.1.1).
    again = await store.create_mailbox(account.id, "Jobs")
    assert again.uidvalidity > old.uidvalidity and again.uidnext == 1
    with pytest.raises(StoreError):
        await store.delete_mailbox(account.id, "INBOX")
    with pytest.raises(MailboxNotFound):
        await store.delete_mailbox(account.id, "Nope")
    assert uid == 1


async def test_subscriptions_are_names_independent_of_mailboxes(store):
    """RFC 3501 6.3.6: DELETE/RENAME/CREATE leave subscriptions alone; any name may be kept."""
    account = await store.ensure_account("up", "subs")
    assert await store.subscriptions(account.id) == sorted(DEFAULT_MAILBOXES)
    await store.create_mailbox(account.id, "Work")
    assert "Work" not in await store.subscriptions(account.id)
    await store.set_subscribed(account.id, "Work", True)
    await store.set_subscribed(account.id, "Work", True)   # twice: still one name
    await store.set_subscribed(account.id, "Ghost/child", True)   # no such mailbox
    await store.set_subscribed(account.id, "inbox", False)   # INBOX in any case (RFC 3501 5.1)
    await store.rename_mailbox(account.id, "Work", "Jobs")
    await store.delete_mailbox(account.id, "Sent")
    assert await store.subscriptions(account.id) == [
        "Archive", "Drafts", "Ghost/child", "Junk", "Sent", "Trash", "Work"]
    await store.set_subscribed(account.id, "Nope", False)   # not subscribed: nothing to do
    await store.set_subscribed(account.id, "Ghost/child", False)
    other = await store.ensure_account("up", "other")
    assert await store.subscriptions(other.id) == sorted(DEFAULT_MAILBOXES)
    assert await store.subscriptions(account.id) == [
        "Archive", "Drafts", "Junk", "Sent", "Trash", "Work"]


async def test_rename_inbox_moves_messages(store):
    account, inbox = await inbox_of(store)
    await store.append(inbox.id, mail(1), ["\\Seen"])
    await store.append(inbox.id, mail(2))
    await store.rename_mailbox(account.id, "INBOX", "Old")
    assert await store.messages(inbox.id) == []
    still = await store.get_mailbox(account.id, INBOX)
    assert still.id == inbox.id and still.uidvalidity == inbox.uidvalidity and still.uidnext == 3
    old = await store.get_mailbox(account.id, "Old")
    moved = await store.messages(old.id)
    assert [(m.uid, m.flags) for m in moved] == [(1, {"\\Seen"}), (2, frozenset())]
    assert await store.append(inbox.id, mail(3)) == 3


async def test_cache_blob_roundtrip(store):
    _, inbox = await inbox_of(store)
    await store.append(inbox.id, mail(1), cache=b'{"envelope": 1}')
    [meta] = await store.messages(inbox.id)
    assert await store.cache(meta) == b'{"envelope": 1}'
    await store.set_cache(meta, b'{"envelope": 2}')
    assert await store.cache(meta) == b'{"envelope": 2}'


# ---- encryption at rest ---------------------------------------------------------------------------

def raw_files(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def raw_database(url: str) -> bytes:
    """Every row of every table of a PostgreSQL store, as the server holds it (bytea as bytes)."""
    out = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    return b"\0".join(out)


def raw_bytes(location: str) -> bytes:
    if location.startswith("postgresql://"):
        return raw_database(location)
    path = pathlib.Path(location)
    return raw_files(path)


async def test_marker_not_found_in_stored_bytes_with_key(store_url, tmp_path, request):
    path = store_url
    ring = KeyRing.parse(KeyRing.generate_line("k1"))
    marker = b"MARKER-7f3a9c-unique-secret-text"
    s = await open_store(path, ring)
    account, inbox = await inbox_of(s)
    body = mail(1, marker * 3)
    await s.ingest(account.id, "u1", body, WHEN, cache=b'{"subject": "%s"}' % marker)
    await s.append(inbox.id, mail(2, marker))
    await s.save_credentials(account.id, b"password " + marker)
    assert marker not in raw_bytes(path)
    messages = await s.messages(inbox.id)
    assert await s.body(messages[0]) == body
    assert marker in await s.cache(messages[0])
    assert marker in await s.load_credentials(account.id)
    await s.close()
    assert marker not in raw_bytes(path)
    # Without encryption the marker is visible: the check above is meaningful.
    if path.startswith("postgresql://"):
        plain = request.getfixturevalue("postgres").fresh_dsn()
    else:
        plain = str(tmp_path / "plain.db")
    s = await open_store(plain)
    account, inbox = await inbox_of(s)
    await s.append(inbox.id, b"Subject: x\r\n\r\n" + marker)
    await s.close()
    assert marker in raw_bytes(plain)


async def test_key_rotation_keeps_old_messages_readable(store_url):
    path = store_url
    k1, k2 = KeyRing.generate_line("k1"), KeyRing.generate_line("k2")
    s = await open_store(path, KeyRing.parse(k1))
    account, inbox = await inbox_of(s)
    await s.append(inbox.id, mail(1))
    await s.close()
    s = await open_store(path, KeyRing.parse(k1 + "\n" + k2))
    await s.append(inbox.id, mail(2))
    first, second = await s.messages(inbox.id)
    assert await s.body(first) == mail(1) and await s.body(second) == mail(2)
    await s.close()
    # Drop k1: the store opens (its key check is under k2) but k1's record names its key.
    s = await open_store(path, KeyRing.parse(k2))
    first, second = await s.messages(inbox.id)
    assert await s.body(second) == mail(2)
    with pytest.raises(StoreKeyError, match=r"message 1: no key 'k1' in key ring"):
        await s.body(first)
    await s.close()


async def test_wrong_or_missing_key_is_a_clear_error(store_url):
    path = store_url
    s = await open_store(path, KeyRing.parse(KeyRing.generate_line("k1")))
    await s.close()
    with pytest.raises(StoreKeyError, match="wrong key or corrupted record"):
        await open_store(path, KeyRing.parse(KeyRing.generate_line("k1")))
    with pytest.raises(StoreKeyError, match="is encrypted"):
        await open_store(path)
    with pytest.raises(StoreKeyError, match="no key 'k1'"):
        await open_store(path, KeyRing.parse(KeyRing.generate_line("other")))


async def test_tampered_record_is_detected(store_url):
    path = store_url
    ring = KeyRing.parse(KeyRing.generate_line("k1"))
    s = await open_store(path, ring)
    account, inbox = await inbox_of(s)
    await s.append(inbox.id, mail(1))
    await s.append(inbox.id, mail(2))
    await s.close()
    # Swap the two records: each is bound to its own body id by the associated data.
    if path.startswith("postgresql://"):
        with psycopg.connect(path) as db:
            (a, da), (b, db_) = db.execute("SELECT id, data FROM bodies ORDER BY id").fetchall()
            db.execute("UPDATE bodies SET data = %s WHERE id = %s", (db_, a))
    else:
        db = sqlite3.connect(path)
        (a, da), (b, db_) = db.execute("SELECT id, data FROM bodies ORDER BY id").fetchall()
        db.execute("UPDATE bodies SET data = ? WHERE id = ?", (db_, a))
        db.commit()
        db.close()
    s = await open_store(path, ring)
    first, _ = await s.messages(inbox.id)
    with pytest.raises(StoreKeyError, match="decryption failed"):
        await s.body(first)
    await s.close()


async def test_credentials_need_a_key(store):
    account, _ = await inbox_of(store)
    with pytest.raises(StoreKeyError):
        await store.save_credentials(account.id, b"secret")
    assert await store.load_credentials(account.id) is None


def test_key_file_parsing(tmp_path):
    with pytest.raises(StoreKeyError, match="line 1"):
        KeyRing.parse("k1:not-base64!!")
    with pytest.raises(StoreKeyError, match="32 bytes"):
        KeyRing.parse("k1:AAAA")
    ring = KeyRing.parse("# comment\n" + KeyRing.generate_line("a") + "\n\n"
                         + KeyRing.generate_line("b") + "\n")
    assert ring.current == "b"
    with pytest.raises(StoreKeyError, match="cannot read key file"):
        KeyRing.from_file(tmp_path / "missing")


async def test_expunged_bodies_stay_until_collected(store, store_url):
    """Issue 13: expunge keeps a body no message refers to until `collect_bodies` (a session not
    yet told may still read it, RFC 2180 4.1.1); a shared body is never collected; a restart
    sweeps what a stopped process left (SQLite only: on PostgreSQL other replicas may still show
    that message, so opening a store never sweeps)."""
    account, inbox = await inbox_of(store)
    archive = await store.get_mailbox(account.id, "Archive")
    uids = [await store.append(inbox.id, mail(i)) for i in range(3)]
    metas = await store.messages(inbox.id)
    await store.copy(inbox.id, [uids[1]], archive.id)
    assert await store.expunge(inbox.id, uids) == uids
    assert await store.bodies(metas) == [mail(0), mail(1), mail(2)]
    await store.collect_bodies([metas[0].body_id, metas[1].body_id])
    assert await store.bodies(metas) == [None, mail(1), mail(2)]   # 1: the copy refers to it
    await store.close()
    reopened = await open_store(store_url)
    swept = None if store_url.endswith(".db") else mail(2)
    try:
        assert await reopened.bodies(metas) == [None, mail(1), swept]
    finally:
        await reopened.close()


async def test_recent_floor_claims_each_uid_once(store):
    """Issue 13: \\Recent exactly once: each claim returns the first UID the caller got."""
    account, inbox = await inbox_of(store)
    assert await store.recent_floor(inbox.id) == 1
    for i in range(3):
        await store.append(inbox.id, mail(i))
    assert await store.recent_floor(inbox.id, claim_upto=2) == 1   # UIDs 1, 2 for this caller
    assert await store.recent_floor(inbox.id, claim_upto=2) == 3   # nothing left up to 2
    assert await store.recent_floor(inbox.id) == 3
    assert await store.recent_floor(inbox.id, claim_upto=3) == 3   # UID 3
    assert await store.recent_floor(inbox.id) == 4


async def test_prune_changes_then_changes_since_refuses_the_pruned_range(store):
    """Issue 13: pruning the change log; a question it can no longer answer is refused, never
    answered wrongly."""
    from proxy.store import ChangesPruned

    account, inbox = await inbox_of(store)
    uids = [await store.append(inbox.id, mail(i)) for i in range(4)]   # MODSEQ 2..5
    await store.expunge(inbox.id, uids[:1])                             # 6
    assert await store.prune_changes(inbox.id, 5) == 3                  # rows of MODSEQ 2, 3, 4
    assert await store.prune_changes(inbox.id, 4) == 0                  # never goes back
    assert [(c.modseq, c.kind) for c in await store.changes_since(inbox.id, 4)] == [
        (5, ChangeKind.APPEND), (6, ChangeKind.EXPUNGE)]
    with pytest.raises(ChangesPruned):
        await store.changes_since(inbox.id, 3)


async def test_migration_2_makes_nothing_recent_in_an_existing_store(tmp_path):
    """Issue 13: a store written by schema 1 gets the recent floor at each mailbox's UIDNEXT (an
    upgrade must not make the whole mailbox recent) and an empty change-log floor."""

    path = str(tmp_path / "v1.db")
    with sqlite_at_schema(path, 1) as db:
        db.execute("INSERT INTO accounts(upstream, user) VALUES ('up', 'old')")
        db.execute("INSERT INTO mailboxes(account_id, name, uidvalidity, uidnext) "
                   "VALUES (1, 'INBOX', 7, 42)")
    s = await open_store(path)
    try:
        assert await s.recent_floor(1) == 42
        assert await s.changes_since(1, 0) == []
    finally:
        await s.close()


async def test_expunge_only_deleted_spares_what_lost_the_flag(store):
    """Issue 13: the UIDs come from a session's view; a message whose \\Deleted another session
    has just removed is not expunged."""
    account, inbox = await inbox_of(store)
    uids = [await store.append(inbox.id, mail(i), ["\\Deleted"]) for i in range(3)]
    await store.store_flags(inbox.id, [uids[1]], ["\\Deleted"], FlagMode.REMOVE)
    assert await store.expunge(inbox.id, uids, only_deleted=True) == [uids[0], uids[2]]
    assert [m.uid for m in await store.messages(inbox.id)] == [uids[1]]


async def test_migration_3_keeps_what_was_subscribed(tmp_path):
    """Issue 17: a store of schema 2 (subscriptions as a mailbox column) keeps exactly the names
    whose mailbox was subscribed."""

    path = str(tmp_path / "v2.db")
    with sqlite_at_schema(path, 2) as db:
        db.execute("INSERT INTO accounts(upstream, user) VALUES ('up', 'old')")
        db.executemany("INSERT INTO mailboxes(account_id, name, uidvalidity, subscribed) "
                       "VALUES (1, ?, 7, ?)", [("INBOX", 1), ("Work", 0), ("Lists/ietf", 1)])
    s = await open_store(path)
    try:
        assert await s.subscriptions(1) == ["INBOX", "Lists/ietf"]
        assert [b.name for b in await s.list_mailboxes(1)] == ["INBOX", "Lists/ietf", "Work"]
    finally:
        await s.close()


def rows_of_account(location: str, account_id: int) -> dict[str, int]:
    """How many rows of each table belong to the account (read from the database itself)."""
    queries = {
        "accounts": "SELECT count(*) FROM accounts WHERE id = {p}",
        "mailboxes": "SELECT count(*) FROM mailboxes WHERE account_id = {p}",
        "messages": "SELECT count(*) FROM messages WHERE mailbox_id NOT IN (SELECT id FROM mailboxes)",
        "bodies": "SELECT count(*) FROM bodies WHERE account_id = {p}",
        "uidls": "SELECT count(*) FROM uidls WHERE account_id = {p}",
        "changes": "SELECT count(*) FROM changes WHERE account_id = {p}",
        "subscriptions": "SELECT count(*) FROM subscriptions WHERE account_id = {p}",
    }
    connect = psycopg.connect if location.startswith("postgresql://") else sqlite3.connect
    with connect(location) as conn:
        return {table: conn.execute(q.format(p=int(account_id))).fetchone()[0]
                for table, q in queries.items()}


async def test_account_summaries_and_delete_account_touch_only_that_account(store, store_url):
    alice, inbox = await inbox_of(store, "alice")
    bob, bob_inbox = await inbox_of(store, "bob")
    await inbox_of(store, "carol")   # an account with nothing in it yet
    before = time.time()
    await store.ingest_many(alice.id, [IngestItem("a1", mail(1), WHEN), IngestItem("a2", mail(2), WHEN)])
    after = time.time()
    archive = await store.get_mailbox(alice.id, "Archive")
    await store.copy(inbox.id, [1], archive.id)   # a copy counts as a message, its body once
    await store.ingest(bob.id, "b1", mail(3, b"x" * 100), WHEN)
    await store.set_subscribed(bob.id, "Junk", False)

    summaries = await store.account_summaries()
    assert [(s.account, s.messages, s.bytes) for s in summaries] == [
        (alice, 3, len(mail(1)) + len(mail(2))),
        (bob, 1, len(mail(3, b"x" * 100))),
        (await store.get_account("up", "carol"), 0, 0)]
    assert before <= summaries[0].last_fetch <= after
    assert summaries[2].last_fetch is None

    assert rows_of_account(store_url, alice.id) == {
        "accounts": 1, "mailboxes": len(DEFAULT_MAILBOXES), "messages": 0, "bodies": 2, "uidls": 2,
        "changes": 3, "subscriptions": len(DEFAULT_MAILBOXES)}
    await store.delete_account(alice.id)
    assert rows_of_account(store_url, alice.id) == dict.fromkeys(
        ["accounts", "mailboxes", "messages", "bodies", "uidls", "changes", "subscriptions"], 0)
    assert await store.get_account("up", "alice") is None
    assert [s.account.user for s in await store.account_summaries()] == ["bob", "carol"]
    # bob's mail, mailboxes and UIDLs are untouched
    assert [await store.body(m) for m in await store.messages(bob_inbox.id)] == [mail(3, b"x" * 100)]
    assert "Junk" not in await store.subscriptions(bob.id)
    assert "INBOX" in await store.subscriptions(bob.id)
    assert await store.known_uidls(bob.id) == {"b1"}
    # a new account of the same user starts empty: nothing of the old one comes back
    again = await store.ensure_account("up", "alice")
    assert again.id != alice.id
    assert await store.known_uidls(again.id) == set()
    assert sorted(await store.subscriptions(again.id)) == sorted(DEFAULT_MAILBOXES)
    assert {mb.name: mb.exists for mb in await store.list_mailboxes(again.id)} == \
        dict.fromkeys(DEFAULT_MAILBOXES, 0)
    assert await store.changes_since((await store.get_mailbox(again.id, INBOX)).id, 0) == []


async def test_record_sync_keeps_the_last_success_and_the_last_error(store):
    """Issue 19: a success sets last_sync and clears the error; a failure keeps the last success
    and sets the error (cut to ERROR_MAX_CHARS); summaries show them, per account."""
    from proxy.store._accounts_sql import ERROR_MAX_CHARS

    alice, _ = await inbox_of(store, "alice")
    bob, _ = await inbox_of(store, "bob")
    fresh = await store.account_summaries()
    assert [(s.last_sync, s.last_error, s.last_error_at) for s in fresh] == [(None, None, None)] * 2

    before = time.time()
    await store.record_sync(alice.id, None)
    synced = time.time()
    await store.record_sync(alice.id, "auth_rejected: LOGIN failed")
    await store.record_sync(bob.id, "unreachable: " + "x" * 300)
    after = time.time()
    alice_s, bob_s = await store.account_summaries()
    assert before <= alice_s.last_sync <= synced
    assert alice_s.last_error == "auth_rejected: LOGIN failed"
    assert synced <= alice_s.last_error_at <= after
    assert (bob_s.last_sync, bob_s.last_error) == (None, ("unreachable: " + "x" * 300)[:ERROR_MAX_CHARS])

    await store.record_sync(alice.id, None)
    alice_s, _ = await store.account_summaries()
    assert (alice_s.last_error, alice_s.last_error_at) == (None, None)
    assert after <= alice_s.last_sync <= time.time()


async def test_migration_4_adds_empty_sync_status(tmp_path):
    await check_migration_4_sync_status(str(tmp_path / "v3.db"))


async def test_migration_7_save_date_is_the_internal_date(tmp_path):
    """Issue 17, SAVEDATE (RFC 8514): messages stored before schema 7 take their internal date
    as save date; a message stored after it, the time it was saved."""
    from proxy.store import _schema

    path = str(tmp_path / "v6.db")
    with sqlite_at_schema(path, 6) as db:
        pass   # the schema alone
    s = await open_store(path)
    try:
        account = await s.ensure_account("up", "old")
        inbox = (await s.get_mailbox(account.id, "INBOX")).id
    finally:
        await s.close()
    db = _schema.connect(path)   # a row as schema 6 stored it, without a save date
    with _schema.transaction(db):
        db.execute("UPDATE schema_version SET version = 6")
        db.execute("ALTER TABLE messages DROP COLUMN saved_at")
        db.execute("ALTER TABLE uidls DROP COLUMN digest")   # (step 9)
        db.execute("INSERT INTO bodies(account_id, size, data) VALUES (?, 3, x'616263')",
                   (account.id,))
        db.execute("INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                   "body_id) VALUES (?, 1, 1600000000, 120, '', 1, last_insert_rowid())", (inbox,))
        db.execute("UPDATE mailboxes SET uidnext = 2 WHERE id = ?", (inbox,))
    db.close()
    s = await open_store(path)
    try:
        before = int(time.time())
        await s.append(inbox, b"Subject: new\r\n\r\nx\r\n",
                       internaldate=dt.datetime(2001, 2, 3, tzinfo=dt.timezone.utc))
        old, new = await s.messages(inbox)
        assert old.saved == dt.datetime(2020, 9, 13, 12, 26, 40, tzinfo=dt.timezone.utc)
        assert old.saved.utcoffset() == dt.timedelta(0)
        assert before <= new.saved.timestamp() <= time.time()
    finally:
        await s.close()
