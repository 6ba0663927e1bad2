"""The announcement of mail stored during a long sync (AccountFetcher._stored) is not part of
the sync: a store error while reading what to announce is logged, and the sync goes on (its
batches are committed; its end announces them), instead of failing it and leaving the rest of
the mailbox to the next poll."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from proxy.config import Logging
from proxy.gateway.account_fetcher import AccountFetcher
from proxy.store import StoreUnavailable
from support.logrecords import caught


class _Unavailable:
    calls = 0

    async def ensure_account(self, upstream: str, user: str) -> None:
        self.calls += 1
        raise StoreUnavailable("the database is restarting")


async def test_a_failed_announcement_during_a_sync_does_not_fail_it() -> None:
    store = _Unavailable()
    service = SimpleNamespace(store=store, config=SimpleNamespace(logging=Logging()))
    fetcher = AccountFetcher(service, "dovecot", "someone@example.com")   # type: ignore[arg-type]
    with caught(logging.WARNING) as records:
        await fetcher._stored(1)   # (raised StoreUnavailable into the sync's commit loop)
    assert store.calls == 1
    assert [(r.levelno, r.getMessage()) for r in records] == \
        [(logging.WARNING, "gateway_announce_failed")]
