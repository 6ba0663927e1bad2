"""Issue 14, item 5: a full disk is reported as such (SQLite's own words and the store's path),
not as the "cannot rollback" that a second ROLLBACK used to put in its place, and nothing
committed before is lost."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from proxy.store import IngestItem, StoreFailure, open_store


async def test_disk_full_is_reported_as_disk_full(tmp_path):
    path = str(tmp_path / "s.db")
    store = await open_store(path)
    account = await store.ensure_account("up", "u")
    now = dt.datetime.now(dt.timezone.utc)
    assert await store.ingest_many(account.id, [IngestItem("a", b"Subject: a\r\n\r\na\r\n", now)]) == [1]
    db = store._db   # a real SQLITE_FULL: the file may not grow past a few more pages
    db.execute("PRAGMA max_page_count = %d" % (db.execute("PRAGMA page_count").fetchone()[0] + 5))
    with pytest.raises(StoreFailure) as caught:
        await store.ingest_many(account.id, [IngestItem("b", os.urandom(200_000), now)])
    assert str(caught.value) == f"store {path}: database or disk is full"
    db.execute("PRAGMA max_page_count = 1073741823")   # space again: the store goes on
    assert await store.ingest_many(account.id, [IngestItem("c", b"Subject: c\r\n\r\nc\r\n", now)]) == [2]
    assert await store.known_uidls(account.id) == {"a", "c"}
    await store.close()
