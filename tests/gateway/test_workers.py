"""The gateway's CPU work runs on thread limiters of its own (proxy/gateway/workers.py), not
under trio's process-wide default limiter that TLS set-up shares: with every one of the
gateway's command threads busy (as many as trio's whole default limiter has, and more work
waiting), a sync still builds its POP3 upstream's TLS context, completes the TLS handshake,
logs in and ingests a message."""

from __future__ import annotations

import threading

import trio
import trio.testing

from proxy.gateway.fetcher import sync_account
from proxy.gateway.workers import Workers
from proxy.store import acting_for, open_store
from support.polling import wait_until

from .helpers import make_config, stored, tls_dovecot


async def test_a_tls_sync_completes_while_every_command_thread_is_busy(dovecot_factory, tmp_path):
    server, name, password, ca_pem = tls_dovecot(dovecot_factory, tmp_path)
    config = make_config(server.pop3s_port, str(tmp_path / "s.db"), tls="implicit",
                         ca_file=str(ca_pem))
    store = await open_store(str(tmp_path / "s.db"))

    busy = trio.to_thread.current_default_thread_limiter().total_tokens   # trio's 40
    workers = Workers.build(command_threads=busy, ingest_threads=1)
    release = threading.Event()
    running = []

    def sort_storm() -> str:   # a SORT over a huge mailbox, as far as threads are concerned
        running.append(1)
        assert release.wait(120), "never released"
        return "sorted"

    results: list[str] = []

    async def command() -> None:
        results.append(await workers.command(sort_storm))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(busy + 1):
                nursery.start_soon(command)
            await trio.testing.wait_all_tasks_blocked()
            assert workers.commands.borrowed_tokens == busy
            assert workers.commands.statistics().tasks_waiting == 1   # the storm waits its turn
            with trio.fail_after(120):   # bounded: a shared limiter would hang here
                result = await sync_account(config, store, "dc", name, password, workers=workers)
            assert result.new == 1
            assert workers.commands.statistics().tasks_waiting == 1   # still full throughout
            release.set()
        assert results == ["sorted"] * (busy + 1)
        assert len(await stored(store, name)) == 1
    finally:
        release.set()
        await store.close()


async def test_one_accounts_storm_holds_at_most_half_the_command_threads():
    """Account 1 has four jobs blocked in threads (as many as the limiter has); with 4 command
    threads it holds 2 and the other 2 wait in its share, so account 2's job runs at once on a
    third thread instead of queueing behind the storm."""
    workers = Workers.build(command_threads=4, ingest_threads=1)
    release = threading.Event()
    started: list[int] = []

    def blocked(account: int) -> int:
        started.append(account)
        release.wait(30)
        return account

    async def job(account: int, function, done: list[int]) -> None:
        with acting_for(account):
            done.append(await workers.command(function, account))

    done: list[int] = []
    async with trio.open_nursery() as nursery:
        try:
            for _ in range(4):
                nursery.start_soon(job, 1, blocked, done)
            await wait_until(lambda: len(started) >= 2, "account 1's two threads running")
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(30):
                await job(2, lambda account: account, done)   # not queued behind account 1
            assert done == [2] and started == [1, 1]
            assert workers.commands.borrowed_tokens == 2   # account 1's other jobs wait
        finally:
            release.set()
    assert sorted(done) == [1, 1, 1, 1, 2]
