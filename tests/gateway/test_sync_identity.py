"""Which upstream message is which across syncs (proxy/gateway/sync_identity.py), on both stores.

A UIDL reused for new mail once its message is gone (RFC 1939 7 allows it): the new mail is
stored as a new message, the old one stays. UIDLs renamed (a server's UIDL format changed):
nothing is stored twice, and delete-after-fetch still DELEs each message. Neither makes later
syncs download mail again. The scripted server (support/hostile_pop3.py) plays the server that
reuses UIDLs (Dovecot never does); Dovecot itself renames them (test_dovecot_uidl_format.py).
"""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import pytest
import trio

from proxy.gateway.account_locks import AccountLocks
from proxy.gateway.fetcher import sync_account
from proxy.session.failures import Failure
from proxy.session.upstream import UpstreamError
from proxy.store import crypto, open_store
from proxy.store.crypto import KeyRing
from support.hostile_pop3 import HostilePop3, reply
from support.logrecords import caught

from .helpers import make_config, postgres_at_schema, sqlite_at_schema

USER, PASSWORD = "reuse@example.com", "pa55-w0rd"
MESSAGES = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, 6)]
NEVER = 120.0   # a bound only a build that waits for ever reaches


async def sync(server: HostilePop3, store_url: str, store, retention: str = "keep",
               locks: AccountLocks | None = None):
    config = make_config(server.port, store_url, retention)
    with trio.fail_after(NEVER):
        return await sync_account(config, store, "dc", USER, PASSWORD, locks=locks)


async def inbox(store) -> list[tuple[str | None, bytes]]:
    """(UIDL, body) of every INBOX message, sorted: a UIDL may name two (a reused one)."""
    account = await store.ensure_account("dc", USER)
    box = await store.get_mailbox(account.id, "INBOX")
    return sorted([(meta.pop3_uidl, await store.body(meta)) for meta in await store.messages(box.id)])


def retrs(server: HostilePop3) -> int:
    return server.commands.count(b"RETR")


def run_sql(store_url: str, statement: str) -> None:
    """One statement on the store's database itself (the rows as an older version left them)."""
    if store_url.startswith("postgresql://"):
        with psycopg.connect(store_url) as conn:
            conn.execute(statement)
    else:
        db = sqlite3.connect(store_url)
        with db:
            db.execute(statement)
        db.close()


async def test_new_mail_under_a_uidl_another_client_deleted_is_stored(nursery, store_url, store):
    """Another POP3 client deletes message id-1; a later listing without it marks its row gone;
    then the server gives id-1 to new mail. The new mail is stored beside the old message (it
    was skipped as known, for ever), and the next sync downloads nothing."""
    server = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 2
    del server.messages[0], server.uidls[0]   # another client DELEd id-1
    assert (await sync(server, store_url, store)).new == 0
    server.messages.append(MESSAGES[2])
    server.uidls.append(b"id-1")              # RFC 1939 7: the UIDL of a message gone
    assert (await sync(server, store_url, store)).new == 1
    assert await inbox(store) == [("id-1", MESSAGES[0]), ("id-1", MESSAGES[2]),
                                  ("id-2", MESSAGES[1])]
    before = retrs(server)
    assert (await sync(server, store_url, store)).new == 0
    assert retrs(server) == before   # (not downloaded again)


async def test_new_mail_under_a_uidl_the_gateway_deleted_is_stored_and_deleted(
        nursery, store_url, store):
    """Delete-after-fetch DELEs id-1 and id-2; the server then gives id-1 to new mail (a UIDL
    from a counter). It is stored and DELEd in turn (it was never fetched, never DELEd, and sat
    upstream for ever)."""
    server = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    await server.start(nursery)
    first = await sync(server, store_url, store, "delete-after-fetch")
    assert (first.new, first.deleted_upstream, server.messages) == (2, 2, [])
    server.messages, server.uidls = [MESSAGES[2]], [b"id-1"]
    again = await sync(server, store_url, store, "delete-after-fetch")
    assert (again.new, again.deleted_upstream, server.messages) == (1, 1, [])
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:3])


async def test_a_uidl_listed_again_on_the_same_message_is_not_stored_twice(
        nursery, store_url, store):
    """id-1 leaves the listing and comes back on the same message (a server that hid it a while):
    it is read once to compare its digest, not stored again, and its row is upstream again (the
    next sync reads nothing; delete-after-fetch DELEs it)."""
    server = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    await server.start(nursery)
    await sync(server, store_url, store)
    hidden = server.messages.pop(0), server.uidls.pop(0)
    await sync(server, store_url, store)
    server.messages.insert(0, hidden[0])
    server.uidls.insert(0, hidden[1])
    before = retrs(server)
    assert (await sync(server, store_url, store)).new == 0
    assert retrs(server) == before + 1
    assert (await sync(server, store_url, store)).new == 0 and retrs(server) == before + 1
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:2])
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream, server.messages) == (0, 2, [])


async def test_renamed_uidls_are_not_stored_twice(nursery, store_url, store):
    """Every UIDL changes (a new UIDL format): each message is read once more, none is stored
    again, and the next sync reads nothing."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD)
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 3
    server.uidls = [b"new-%d" % n for n in range(1, 4)]
    assert (await sync(server, store_url, store)).new == 0
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:3])
    before = retrs(server)
    assert (await sync(server, store_url, store)).new == 0 and retrs(server) == before


async def test_renamed_uidls_are_deleted_under_delete_after_fetch(nursery, store_url, store):
    """Stored under `keep`, renamed, then synced with delete-after-fetch: the renamed messages
    are DELEd upstream (the store holds them), and stored once."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD)
    await server.start(nursery)
    await sync(server, store_url, store)
    server.uidls = [b"new-%d" % n for n in range(1, 4)]
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream, server.messages) == (0, 3, [])
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:3])


async def test_identical_messages_stay_as_many_as_upstream_has(nursery, store_url, store):
    """Two byte-identical messages, renamed: each new UIDL takes one stored message, so both
    stay stored once; one more identical message arriving later under a UIDL of its own is
    new mail (no row left the listing for it), not the same message."""
    twins = [MESSAGES[0], MESSAGES[0], MESSAGES[1]]
    server = HostilePop3(twins, USER, PASSWORD)
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 3
    server.uidls = [b"new-%d" % n for n in range(1, 4)]
    assert (await sync(server, store_url, store)).new == 0
    server.messages.append(MESSAGES[0])
    server.uidls.append(b"new-4")
    assert (await sync(server, store_url, store)).new == 1
    assert sorted(body for _, body in await inbox(store)) == sorted(twins + [MESSAGES[0]])


async def test_rows_without_a_digest_take_it_from_the_stored_message(nursery, store_url, store):
    """Rows stored before schema step 9 have no digest: a rename takes it from the messages
    stored under them (no download but the renamed mail's own), and stores nothing twice."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD)
    await server.start(nursery)
    await sync(server, store_url, store)
    run_sql(store_url, "UPDATE uidls SET digest = NULL")
    server.uidls = [b"new-%d" % n for n in range(1, 4)]
    with caught(logging.INFO) as records:
        assert (await sync(server, store_url, store)).new == 0
    assert [r.fields for r in records if r.getMessage() == "gateway_sync_digests_backfilled"] \
        == [{"rows": 3, "found": 3,
             "note": "UIDLs stored before schema step 9, listed again or renamed"}]
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:3])


async def test_a_uidl_without_a_digest_or_message_listed_again_is_new_mail(
        nursery, store_url, store):
    """A row of before schema step 9 whose message the user expunged: listed again, nothing
    tells whether it is the same mail, so it is stored (at worst once more; never lost)."""
    server = HostilePop3(MESSAGES[:1], USER, PASSWORD)
    await server.start(nursery)
    await sync(server, store_url, store)
    account = await store.ensure_account("dc", USER)
    box = await store.get_mailbox(account.id, "INBOX")
    await store.expunge(box.id, [meta.uid for meta in await store.messages(box.id)])
    run_sql(store_url, "UPDATE uidls SET digest = NULL")
    server.messages, server.uidls = [], []
    await sync(server, store_url, store)
    server.messages, server.uidls = [MESSAGES[3]], [b"id-1"]
    assert (await sync(server, store_url, store)).new == 1
    assert await inbox(store) == [("id-1", MESSAGES[3])]


async def test_a_schema_8_store_keeps_its_uidls_without_digests(store_url):
    """Schema step 9 adds the digest column: the rows of before keep their UIDLs, with none."""
    if store_url.startswith("postgresql://"):
        with postgres_at_schema(store_url, 8) as conn:
            conn.execute("INSERT INTO accounts(id, upstream, username) VALUES (1, 'up', 'old')")
            conn.execute("INSERT INTO uidls(account_id, uidl, fetched_at) VALUES (1, 'u1', 5)")
    else:
        with sqlite_at_schema(store_url, 8) as db:
            db.execute("INSERT INTO accounts(upstream, user) VALUES ('up', 'old')")
            db.execute("INSERT INTO uidls(account_id, uidl, fetched_at) VALUES (1, 'u1', 5)")
    store = await open_store(store_url)
    try:
        assert await store.known_uidls(1) == {"u1"}
        assert await store.uidl_digests(1, ["u1", "u2"]) == {"u1": (None, 5.0)}
        assert len(store.uidl_digest_key) == 32
    finally:
        await store.close()



async def test_a_renamed_body_cut_short_is_not_taken_for_a_stored_message(
        nursery, store_url, store):
    """Renamed UIDLs, and the server does not dot-stuff a line "." (RFC 1939 3) of new-1's mail,
    which is message id-1's bytes then more: the body read ends at that line, so its digest is
    id-1's. That placement waits for the framing after it, which breaks: it is not recorded
    (recorded, new-1 would be id-1's message, the real mail never stored, and delete-after-fetch
    would DELE it). Once the server behaves, the whole mail is stored and DELEd."""
    server = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    await server.start(nursery)
    await sync(server, store_url, store)
    dotted = MESSAGES[0] + b".\r\nthe rest of it\r\n"
    server.messages[0] = dotted
    server.uidls = [b"new-1", b"new-2"]
    server.script(b"RETR", 1, reply(b"+OK\r\n" + dotted + b".\r\n"), once=True)   # not stuffed
    with pytest.raises(UpstreamError) as info:
        await sync(server, store_url, store)
    assert info.value.failure is Failure.PROTOCOL
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream, server.messages) == (1, 2, [])
    assert sorted(body for _, body in await inbox(store)) == sorted([*MESSAGES[:2], dotted])


def meta_value(store_url: str, key: str) -> bytes:
    if store_url.startswith("postgresql://"):
        with psycopg.connect(store_url) as conn:
            return bytes(conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()[0])
    db = sqlite3.connect(store_url)
    try:
        return bytes(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])
    finally:
        db.close()


async def test_the_digest_secret_is_sealed_and_outlives_a_key_rotation(store_url, tmp_path):
    """The digests' secret is sealed with the key ring (the database alone does not give it),
    stays the same across opens and a key rotation (the digests stored stay comparable), and
    another store has its own."""
    k1, k2 = KeyRing.generate_line("k1"), KeyRing.generate_line("k2")
    secrets = []
    for ring in (k1, k1 + "\n" + k2, k2):   # (the last: k1 dropped after the rotation)
        store = await open_store(store_url, KeyRing.parse(ring))
        secrets.append(store.uidl_digest_key)
        await store.close()
        assert crypto.is_encrypted(meta_value(store_url, "uidl_digest_key"))
    assert len(secrets[0]) == 32 and secrets == [secrets[0]] * 3
    other = await open_store(str(tmp_path / "other.db"), KeyRing.parse(k1))
    try:
        assert other.uidl_digest_key != secrets[0]
    finally:
        await other.close()


async def test_renamed_uidls_over_several_budget_cut_syncs_are_not_stored_twice(
        nursery, store_url, store, monkeypatch):
    """A rename of a mailbox bigger than one sync's budget: a sync that only matches renamed
    mail stores nothing, so its budget is never armed and it ends clean (cut False) after its
    first RETR, then applies retention to the listing. The rows not matched yet must stay
    upstream (their mail is in the listing under its new UIDLs, unread): marked gone there,
    the next sync finds no row left for them and stores the rest of the mailbox again."""
    server = HostilePop3(MESSAGES[:4], USER, PASSWORD)
    await server.start(nursery)
    locks = AccountLocks()   # (the service's, shared by its syncs)
    assert (await sync(server, store_url, store, locks=locks)).new == 4
    server.uidls = [b"new-%d" % n for n in range(1, 5)]
    import proxy.gateway.fetcher as fetcher_mod
    monkeypatch.setattr(fetcher_mod, "sync_budget", lambda config: 0.0)   # spent at once
    for _ in range(4):   # one RETR a sync (the first is always sent); more syncs than enough
        assert (await sync(server, store_url, store, locks=locks)).new == 0
    monkeypatch.undo()
    assert (await sync(server, store_url, store, locks=locks)).new == 0
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:4])
    result = await sync(server, store_url, store, "delete-after-fetch", locks)
    assert (result.new, result.deleted_upstream, server.messages) == (0, 4, [])


async def test_renamed_uidls_while_the_quota_is_full_are_not_stored_twice(
        nursery, store_url, store):
    """Renamed while the account's quota is full: no message with a UIDL is read (it could not
    be stored), so none is matched. The rows that left the listing must stay upstream: marked
    gone, the sync after the quota grew finds no row left for the renamed mail and stores the
    whole mailbox again."""
    import yaml

    from proxy import config as config_mod

    from .helpers import config_dict

    server = HostilePop3(MESSAGES[:4], USER, PASSWORD)
    await server.start(nursery)
    locks = AccountLocks()
    assert (await sync(server, store_url, store, locks=locks)).new == 4
    server.uidls = [b"new-%d" % n for n in range(1, 5)]
    full = config_dict(server.port, store_url)
    full["gateway"]["quota"] = {"messages": 4}
    with trio.fail_after(NEVER):
        result = await sync_account(config_mod.loads(yaml.safe_dump(full)), store, "dc", USER,
                                    PASSWORD, locks=locks)
    assert (result.new, result.over_quota) == (0, 4)
    assert (await sync(server, store_url, store, locks=locks)).new == 0   # (no quota now)
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:4])


async def test_a_uidl_that_left_in_a_budget_cut_sync_and_is_reused_is_fetched(
        nursery, store_url, store, monkeypatch):
    """Another client deletes id-1 while new mail waits; the sync that sees id-1 gone is cut by
    its budget with new mail unread, so id-1 may be that mail renamed and is matched again by
    the next sync. It must still be gone upstream for that sync: the server gives id-1 to new
    mail right away (RFC 1939 7), which is stored, not taken for the stored message (kept
    upstream, id-1 was listed and known: never read, never stored)."""
    server = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    await server.start(nursery)
    locks = AccountLocks()
    assert (await sync(server, store_url, store, locks=locks)).new == 2
    del server.messages[0], server.uidls[0]   # another client DELEd id-1
    server.messages += [MESSAGES[2], MESSAGES[3]]
    server.uidls += [b"id-3", b"id-4"]
    import proxy.gateway.fetcher as fetcher_mod
    monkeypatch.setattr(fetcher_mod, "sync_budget", lambda config: 0.0)   # spent at once
    assert (await sync(server, store_url, store, locks=locks)).new == 1   # (id-4 unread)
    monkeypatch.undo()
    server.messages.append(MESSAGES[4])
    server.uidls.append(b"id-1")   # reused at once
    assert (await sync(server, store_url, store, locks=locks)).new == 2
    assert sorted(body for _, body in await inbox(store)) == sorted(MESSAGES[:5])
