"""gateway.limits.command_threads / ingest_threads size the gateway's own worker-thread limiters
(proxy/gateway/workers.py), and a SORT big enough to leave the event loop runs under them."""

from __future__ import annotations

import trio

from proxy.gateway.imapd import _sort

from .conftest import GatewayHandle


async def test_thread_limits_come_from_config_and_sort_uses_them(dovecot, tmp_path, nursery,
                                                                 monkeypatch):
    user, password = dovecot.add_user()
    for n in range(3):
        dovecot.deliver(user, b"Subject: s%d\r\n\r\nbody\r\n" % n)
    handle = GatewayHandle(dovecot, tmp_path, user, password, store=str(tmp_path / "g.db"),
                           limits={"command_threads": 3, "ingest_threads": 5})
    await handle.start(nursery)
    try:
        workers = handle.service.mime.workers
        assert (workers.commands.total_tokens, workers.ingest.total_tokens) == (3, 5)
        monkeypatch.setattr(_sort, "OFF_LOOP_AT", 0)   # three messages leave the loop too
        limiters = []
        real = trio.to_thread.run_sync

        async def spy(fn, *args, limiter=None, **kwargs):
            limiters.append(limiter)
            return await real(fn, *args, limiter=limiter, **kwargs)

        def sort() -> list:
            client = handle.imaplib()
            client.select("INBOX")
            answer = client.sort("(SUBJECT)", "UTF-8", "ALL")
            client.logout()
            return answer

        monkeypatch.setattr(trio.to_thread, "run_sync", spy)
        assert await real(sort) == ("OK", [b"1 2 3"])
        # the items and the sort itself (the store's own calls have their own limiter)
        assert sum(limiter is workers.commands for limiter in limiters) == 2, limiters
    finally:
        await handle.stop()
