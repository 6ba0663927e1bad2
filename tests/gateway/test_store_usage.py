"""Per-account usage counters (issue 17): `Store.usage()` reads two columns kept by triggers in
the transaction of every change, instead of summing the account's messages (~70 ms at 20,000
on SQLite, paid by every APPEND/COPY under a quota). Each test runs on both stores and compares
the counters with the sum computed from the rows after every kind of change."""

from __future__ import annotations

from proxy.store import AppendItem, FlagMode, IngestItem, Usage, open_store
from proxy.store.sqlite import SqliteStore

from .helpers import postgres_at_schema
from .test_store import WHEN, inbox_of, mail

_RECOUNT = ("SELECT coalesce(sum(b.size), 0), count(*) FROM messages m "
            "JOIN mailboxes mb ON mb.id = m.mailbox_id JOIN bodies b ON b.id = m.body_id "
            "WHERE mb.account_id = {p}")


async def recount(store, account_id: int) -> Usage:
    """The usage summed from the rows, in the store's own connection."""
    if isinstance(store, SqliteStore):
        row = store._db.execute(_RECOUNT.format(p="?"), (account_id,)).fetchone()
    else:
        row = await store._run(lambda c: c.execute(_RECOUNT.format(p="%s"),
                                                   (account_id,)).fetchone())
    return Usage(int(row[0]), int(row[1]))


async def test_counters_equal_the_recount_after_every_kind_of_change(store):
    alice, inbox = await inbox_of(store, "alice")
    bob, bob_inbox = await inbox_of(store, "bob")
    seen: list[Usage] = []

    async def check() -> None:
        for account in (alice, bob):
            usage = await store.usage(account.id)
            assert usage == await recount(store, account.id)
        seen.append(await store.usage(alice.id))

    await check()
    assert seen[-1] == Usage(0, 0)
    await store.ingest_many(alice.id, [IngestItem("u1", mail(1, b"x" * 100), WHEN),
                                       IngestItem("u2", mail(2), WHEN),
                                       IngestItem("u1", mail(1), WHEN)])   # a duplicate: skipped
    await check()
    assert seen[-1] == Usage(len(mail(1, b"x" * 100)) + len(mail(2)), 2)
    await store.append(inbox.id, mail(3), ["\\Seen"])
    await store.append_many(inbox.id, [AppendItem(mail(4)), AppendItem(mail(5, b"yy"))])
    await store.append(bob_inbox.id, mail(6, b"bob"))
    await check()
    trash = await store.get_mailbox(alice.id, "Trash")
    await store.copy(inbox.id, [1, 2, 3], trash.id)   # copies count again (RFC 9208)
    await check()
    assert seen[-1].messages == 8
    archive = await store.get_mailbox(alice.id, "Archive")
    await store.move(inbox.id, [4], archive.id)
    await check()
    assert seen[-1] == seen[-2]   # a move within the account changes nothing
    await store.store_flags(inbox.id, [1, 2], ["\\Deleted"], FlagMode.ADD)
    assert await store.expunge(inbox.id, [1, 2, 5], only_deleted=True) == [1, 2]
    await check()
    assert seen[-1].messages == 6
    await store.collect_bodies([m.body_id for m in await store.messages(trash.id)])
    await check()
    box = await store.create_mailbox(alice.id, "Projects")
    await store.copy(inbox.id, [3, 5], box.id)
    await check()
    await store.delete_mailbox(alice.id, "Projects")
    await check()
    assert seen[-1].messages == 6
    await store.rename_mailbox(alice.id, "INBOX", "Old")   # RFC 3501 6.3.5: moves the messages
    await check()
    assert seen[-1] == seen[-2]
    await store.delete_account(bob.id)
    assert await store.usage(bob.id) == Usage(0, 0)
    await check()
    assert seen[-1] == seen[-3]


async def test_migration_6_counts_what_the_store_already_holds(tmp_path):
    """A store of schema 5 with messages gets counters equal to the recount when it opens."""
    path = str(tmp_path / "v5.db")
    s = await open_store(path)
    account, inbox = await inbox_of(s)
    await s.append(inbox.id, mail(1))
    await s.append(inbox.id, mail(2, b"zz"))
    trash = await s.get_mailbox(account.id, "Trash")
    await s.copy(inbox.id, [1], trash.id)
    await s.close()
    from proxy.store import _schema

    db = _schema.connect(path)   # back to schema 5: no counters, no triggers, no save dates
    with _schema.transaction(db):
        db.execute("ALTER TABLE uidls DROP COLUMN digest")   # step 9
        db.execute("ALTER TABLE messages DROP COLUMN saved_at")   # step 7
        for event in ("insert", "delete"):
            db.execute(f"DROP TRIGGER messages_usage_{event}")
        db.execute("ALTER TABLE accounts DROP COLUMN usage_bytes")
        db.execute("ALTER TABLE accounts DROP COLUMN usage_messages")
        db.execute("UPDATE schema_version SET version = 5")
    db.close()
    s = await open_store(path)
    try:
        assert await s.usage(account.id) == Usage(2 * len(mail(1)) + len(mail(2, b"zz")), 3)
        assert await s.usage(account.id) == await recount(s, account.id)
    finally:
        await s.close()


async def test_postgres_migration_6_counts_what_the_store_already_holds(pg_dsn):
    """The same on PostgreSQL: a schema 5 database with messages gets exact counters."""
    from proxy.store import crypto

    raw = mail(1, b"pg")
    with postgres_at_schema(pg_dsn, 5) as c:
        c.execute("INSERT INTO accounts(id, upstream, username) VALUES (1, 'up', 'old')")
        c.execute("INSERT INTO mailboxes(id, account_id, name, uidvalidity, uidnext) "
                  "VALUES (1, 1, 'INBOX', 1, 3), (2, 1, 'Trash', 2, 2)")
        c.execute("INSERT INTO bodies(id, account_id, size, data) VALUES (1, 1, %s, %s)",
                  (len(raw), crypto.seal(raw, b"acct:1:body:1", None)))
        c.execute("INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, "
                  "modseq, body_id) VALUES (1, 1, 0, 0, '', 1, 1), (2, 1, 0, 0, '', 1, 1)")
    s = await open_store(pg_dsn)
    try:
        assert await s.usage(1) == Usage(2 * len(raw), 2)
        assert await s.usage(1) == await recount(s, 1)
    finally:
        await s.close()
