"""OBJECTID (RFC 8474 7): MAILBOXID/EMAILID are keyed hashes of row ids under a random secret
each store makes once (schema step 8) and keeps; on SQLite and PostgreSQL. That `gateway
migrate` keeps the ids is checked end to end in tests/gateway_imapd/test_migrate.py."""

from __future__ import annotations

import re

import pytest

from proxy.gateway.imapd._objectid import ObjectIds
from proxy.store import open_store

from .helpers import migrated_with_one_account

OBJECTID = re.compile(rb"[ME][A-Za-z0-9_-]{20}")   # 8474 7: 1*255(ALPHA / DIGIT / "_" / "-")


def test_ids_are_keyed_hashes_that_show_no_row_id():
    ids, other = ObjectIds(b"k" * 32), ObjectIds(b"K" * 32)
    mailboxes = [ids.mailbox(n) for n in range(1, 200)]
    emails = [ids.email(n) for n in range(1, 200)]
    assert all(OBJECTID.fullmatch(i) for i in mailboxes + emails)
    assert len(set(mailboxes + emails)) == 2 * 199            # kinds apart, none repeated
    assert [ids.mailbox(n) for n in range(1, 200)] == mailboxes   # stable
    assert not set(mailboxes) & {other.mailbox(n) for n in range(1, 200)}   # the key decides
    assert not any(i[1:].isdigit() for i in mailboxes + emails)   # not `M17` (row ids) any more
    with pytest.raises(ValueError):
        ObjectIds(b"short")


async def test_each_store_has_its_own_key_kept_across_reopening(store_url, tmp_path):
    first = await open_store(store_url)
    key = first.objectid_key
    await first.close()
    again = await open_store(store_url)
    try:
        assert len(key) == 32 and again.objectid_key == key
    finally:
        await again.close()
    other = await open_store(str(tmp_path / "other.db"))
    try:
        assert other.objectid_key != key
    finally:
        await other.close()


async def _old_account_gets_a_key(place: str) -> None:
    async with migrated_with_one_account(place, 7) as s:
        assert len(s.objectid_key) == 32
        assert [a.account.user for a in await s.account_summaries()] == ["old"]


async def test_migration_8_gives_an_sqlite_store_of_schema_7_a_key(tmp_path):
    await _old_account_gets_a_key(str(tmp_path / "v7.db"))


async def test_migration_8_gives_a_postgresql_store_of_schema_7_a_key(pg_dsn):
    await _old_account_gets_a_key(pg_dsn)
