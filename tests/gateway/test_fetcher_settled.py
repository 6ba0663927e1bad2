"""A sync that finds the UIDL listing its account's last sync left entirely stored does no store
work for it (issue 13's first SELECT after LOGIN: every login syncs). Against a real Dovecot
pop3d; the store is the real one, its UIDL reads counted."""

from __future__ import annotations

import yaml

from proxy import config as config_mod
from proxy.gateway.account_locks import AccountLocks
from proxy.gateway.fetcher import sync_account
from proxy.store import open_store

from .helpers import config_dict, make_config, stored


class Counting:
    """The real store; counts its calls that read UIDLs."""

    def __init__(self, store):
        self._store, self.uidl_reads = store, 0

    def __getattr__(self, name):
        if name in ("known_uidls", "uidl_rows", "fetched_at"):
            self.uidl_reads += 1
        return getattr(self._store, name)


async def test_unchanged_listing_is_not_read_again_and_a_change_is(dovecot, user, tmp_path):
    name, password = user
    dovecot.deliver(name, b"Subject: one\r\n\r\nfirst\r\n")
    store = await open_store(str(tmp_path / "s.db"))
    counting, locks = Counting(store), AccountLocks()
    config = make_config(dovecot.pop3_port, str(tmp_path / "s.db"))
    try:
        result = await sync_account(config, counting, "dc", name, password, locks=locks)
        assert (result.new, counting.uidl_reads) == (1, 2)
        for _ in range(2):   # the same listing: nothing read, nothing fetched
            result = await sync_account(config, counting, "dc", name, password, locks=locks)
            assert (result.new, counting.uidl_reads) == (0, 2)
        dovecot.deliver(name, b"Subject: two\r\n\r\nsecond\r\n")
        result = await sync_account(config, counting, "dc", name, password, locks=locks)
        assert (result.new, counting.uidl_reads) == (1, 4)
        assert sorted(b for _, b in (await stored(store, name)).values()) == [
            b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
        # another account id for the same user (deleted, then back): read again
        await store.delete_account((await store.ensure_account("dc", name)).id)
        result = await sync_account(config, counting, "dc", name, password, locks=locks)
        assert (result.new, counting.uidl_reads) == (2, 6)
        # without locks shared between syncs (`gateway sync`): always read
        await sync_account(config, counting, "dc", name, password)
        assert counting.uidl_reads == 8
    finally:
        await store.close()


async def test_no_shortcut_under_retention_or_over_quota(dovecot, user, tmp_path):
    name, password = user
    for n in range(3):
        dovecot.deliver(name, b"Subject: q%d\r\n\r\n%s\r\n" % (n, b"x" * 500))
    store = await open_store(str(tmp_path / "s.db"))
    counting, locks = Counting(store), AccountLocks()
    try:
        cfg = config_dict(dovecot.pop3_port, str(tmp_path / "s.db"))
        cfg["gateway"]["quota"] = {"messages": 2}
        over = config_mod.loads(yaml.safe_dump(cfg))
        for _ in range(2):   # over quota: the listing is never settled, each sync reads
            result = await sync_account(over, counting, "dc", name, password, locks=locks)
            assert result.over_quota == 1
        assert counting.uidl_reads == 4
        timed = make_config(dovecot.pop3_port, str(tmp_path / "s.db"), "30d")
        for _ in range(2):   # a retention delay: ages must be checked every time
            await sync_account(timed, counting, "dc", name, password, locks=locks)
        assert counting.uidl_reads == 8
    finally:
        await store.close()
