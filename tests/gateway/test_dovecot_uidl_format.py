"""A real Dovecot whose `pop3_uidl_format` changes between two syncs (an admin's change): every
UIDL the gateway stored is renamed. Nothing is stored twice (sync_identity.py), later syncs
download nothing, new mail still arrives, and delete-after-fetch DELEs every message, the
renamed ones too. Both stores."""

from __future__ import annotations

import trio

from proxy.gateway.fetcher import sync_account

from .helpers import corpus, make_config, upstream_count, upstream_messages

NEVER = 120.0   # a bound only a build that waits for ever reaches


async def test_a_new_pop3_uidl_format_stores_nothing_twice(dovecot_factory, store_url, store):
    dovecot = dovecot_factory()   # (its own: restarted below with another UIDL format)
    user, password = dovecot.add_user()
    mail = corpus(4)
    for body in mail[:3]:
        dovecot.deliver(user, body)

    async def sync(retention: str = "keep"):
        config = make_config(dovecot.pop3_port, store_url, retention)
        with trio.fail_after(NEVER):
            return await sync_account(config, store, "dc", user, password)

    def listed() -> set[str]:
        return set(upstream_messages("127.0.0.1", dovecot.pop3_port, user, password))

    assert (await sync()).new == 3
    before = listed()
    dovecot.stop()
    dovecot.extra_config = "pop3_uidl_format = %g\n"   # the mail's GUID instead of UID+UIDVALIDITY
    dovecot.start()
    assert listed().isdisjoint(before)   # (every UIDL renamed)
    assert (await sync()).new == 0
    assert (await sync()).new == 0
    dovecot.deliver(user, mail[3])
    assert (await sync()).new == 1
    upstream = upstream_messages("127.0.0.1", dovecot.pop3_port, user, password)
    result = await sync("delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (0, 4)
    assert upstream_count("127.0.0.1", dovecot.pop3_port, user, password) == 0
    account = await store.ensure_account("dc", user)
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert sorted([await store.body(m) for m in await store.messages(inbox.id)]) == \
        sorted(upstream.values())
