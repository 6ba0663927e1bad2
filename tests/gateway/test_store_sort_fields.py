"""Sort-fields records (issue 17): kept per body by both stores, written at ingest and APPEND,
filled in once for bodies stored without one, read by SORT/THREAD instead of every header."""

from __future__ import annotations

from proxy.gateway.imapd._caches import BodyCache, SortFieldCache
from proxy.gateway.sortkeys import RECORD_VERSION, decode, encode, extract, extract_record
from proxy.store import AppendItem, IngestItem, KeyRing, open_store

from .helpers import sqlite_at_schema
from .test_store import WHEN, inbox_of, mail, raw_bytes


def header(n: int, subject: str = "Re: topic", refs: str = "") -> bytes:
    return (f"From: Person {n} <p{n}@example.org>\r\nTo: list@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 14 Nov 2023 22:13:{n % 60:02d} +0000\r\nMessage-ID: <m{n}@x>\r\n"
            f"{refs}\r\nbody {n}\r\n").encode()


def test_record_round_trip_and_versions():
    fields = extract(header(7, "=?UTF-8?Q?Re=3A_=C3=BCber?=", "References: <a@x> <b@x>\r\n"))
    assert decode(encode(fields)) == fields
    assert decode(extract_record(b"Subject: x\r\n\r\n")) == extract(b"Subject: x\r\n\r\n")
    stale = encode(fields).replace(b"[%d," % RECORD_VERSION, b"[%d," % (RECORD_VERSION + 1), 1)
    for bad in (None, b"", stale, b"[1, 2]", b"not json", b'{"a": 1}'):
        assert decode(bad) is None, bad


async def test_records_stored_with_bodies_shared_by_copies_and_gone_with_them(store):
    account, inbox = await inbox_of(store)
    trash = await store.get_mailbox(account.id, "Trash")
    await store.ingest_many(account.id, [IngestItem("u1", mail(1), WHEN, None, b"r1"),
                                         IngestItem("u2", mail(2), WHEN)])
    await store.append(inbox.id, mail(3), sort_fields=b"r3")
    await store.append_many(inbox.id, [AppendItem(mail(4), sort_fields=b"r4"), AppendItem(mail(5))])
    metas = await store.messages(inbox.id)
    assert await store.sort_fields(metas) == [b"r1", None, b"r3", b"r4", None]
    await store.set_sort_fields([(metas[1], b"r2"), (metas[4], b"r5")])
    assert await store.sort_fields(metas) == [b"r1", b"r2", b"r3", b"r4", b"r5"]
    await store.copy(inbox.id, [1, 4], trash.id)
    copies = await store.messages(trash.id)
    assert await store.sort_fields(copies) == [b"r1", b"r4"]
    assert await store.expunge(inbox.id, [2]) == [2]
    await store.collect_bodies([metas[1].body_id])
    assert await store.sort_fields([metas[1], metas[0]]) == [None, b"r1"]
    await store.set_sort_fields([(metas[1], b"late")])   # gone: skipped, not an error
    assert await store.sort_fields([metas[1]]) == [None]


async def test_records_are_sealed_with_a_key(store_url):
    marker = b"SORT-MARKER-4b1e-subject"
    s = await open_store(store_url, KeyRing.parse(KeyRing.generate_line("k1")))
    try:
        account, inbox = await inbox_of(s)
        await s.ingest_many(account.id, [IngestItem("u1", mail(1), WHEN, None, marker + b"1")])
        await s.append(inbox.id, mail(2), sort_fields=marker + b"2")
        metas = await s.messages(inbox.id)
        await s.set_sort_fields([(metas[0], marker + b"3")])
        assert await s.sort_fields(metas) == [marker + b"3", marker + b"2"]
        assert marker not in raw_bytes(store_url)
    finally:
        await s.close()


class CountingStore:
    """The real store, counting the bodies read for sort fields."""

    def __init__(self, store):
        self.store, self.bodies_read = store, 0

    async def sort_fields(self, metas):
        return await self.store.sort_fields(metas)

    async def set_sort_fields(self, items):
        await self.store.set_sort_fields(items)

    async def bodies(self, metas):
        self.bodies_read += len(metas)
        return await self.store.bodies(metas)


async def test_fields_come_from_records_and_missing_records_are_filled_once(store):
    account, inbox = await inbox_of(store)
    raws = [header(n, f"topic {n % 3}") for n in range(1, 7)]
    for n, raw in enumerate(raws, 1):   # 1-3 with records, 4-6 as stored before there were any
        await store.append(inbox.id, raw, sort_fields=extract_record(raw) if n <= 3 else None)
    metas = await store.messages(inbox.id)
    stale = encode(extract(raws[2])).replace(b"[%d," % RECORD_VERSION, b"[0,", 1)
    await store.set_sort_fields([(metas[2], stale)])   # another version: recomputed
    counting = CountingStore(store)
    first = await SortFieldCache(BodyCache()).fields(counting, metas)
    assert first == [extract(raw) for raw in raws]
    assert counting.bodies_read == 4   # 3 (stale) and 4-6 (none)
    assert [decode(r) for r in await store.sort_fields(metas)] == first
    # a new process (empty caches) reads records only
    counting = CountingStore(store)
    assert await SortFieldCache(BodyCache()).fields(counting, metas) == first
    assert counting.bodies_read == 0


async def test_migration_5_keeps_bodies_which_get_their_record_at_the_first_sort(tmp_path):
    """A store of schema 4 keeps its messages; they have no record until their first SORT."""
    from proxy.store import crypto

    path, raw = str(tmp_path / "v4.db"), header(1, "old mail")
    with sqlite_at_schema(path, 4) as db:
        db.execute("INSERT INTO accounts(upstream, user) VALUES ('up', 'old')")
        db.execute("INSERT INTO mailboxes(account_id, name, uidvalidity, uidnext) "
                   "VALUES (1, 'INBOX', 1, 2)")
        db.execute("INSERT INTO bodies(account_id, size, data) VALUES (1, ?, ?)",
                   (len(raw), crypto.seal(raw, b"acct:1:body:1", None)))
        db.execute("INSERT INTO messages(mailbox_id, uid, internaldate, tz_minutes, flags, modseq, "
                   "body_id) VALUES (1, 1, 0, 0, '', 1, 1)")
    s = await open_store(path)
    try:
        [meta] = await s.messages((await s.get_mailbox(1, "INBOX")).id)
        assert await s.body(meta) == raw
        assert await s.sort_fields([meta]) == [None]
        assert await SortFieldCache(BodyCache()).fields(s, [meta]) == [extract(raw)]
        assert await s.sort_fields([meta]) == [extract_record(raw)]
    finally:
        await s.close()
