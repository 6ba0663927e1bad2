"""A gateway login waits for the account's POP3 sync at most `gateway.login_sync_wait`
(proxy/gateway/service.py). Within it, the login answers once the mailbox is stored, and the
first SELECT shows it all; past it (0s here: the sync cannot have finished) the login is
answered OK at once, the client sees what is stored so far, and the rest arrives as untagged
EXISTS once the sync has finished, as with any new mail. Each login is counted in
mailproxy_gateway_login_syncs_total{result=synced|pending}. Real Dovecot, SQLite store."""

from __future__ import annotations

import re

import pytest
import trio

from proxy import config as config_mod
from proxy.gateway import ingest_batches
from support import polling

from .conftest import GatewayHandle, message
from .test_condstore import Raw

COUNT = 3


def _logins(gateway: GatewayHandle) -> dict[str, float | None]:
    return {result: gateway.metrics.registry.get_sample_value(
                "mailproxy_gateway_login_syncs_total", {"result": result})
            for result in ("synced", "pending")}


def _exists(lines: list[bytes]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(rb"\* (\d+) EXISTS", line))]


async def _gateway(dovecot, tmp_path, nursery, wait: str) -> GatewayHandle:
    user, password = dovecot.add_user()
    for n in range(COUNT):
        dovecot.deliver(user, message(n))
    gateway = GatewayHandle(dovecot, tmp_path, user, password, login_sync_wait=wait,
                            poll_interval="600s")
    await gateway.start(nursery)
    return gateway


async def test_a_login_within_the_wait_sees_the_whole_mailbox(dovecot, tmp_path, nursery):
    gateway = await _gateway(dovecot, tmp_path, nursery, "10m")   # a bound only a hang reaches
    assert _logins(gateway) == {"synced": 0.0, "pending": 0.0}

    def run() -> list[bytes]:
        client = Raw(gateway.port, gateway.user, gateway.password)
        lines = client.cmd("SELECT INBOX")[0]
        client.close()
        return lines

    lines = await trio.to_thread.run_sync(run)
    assert _exists(lines) == [COUNT]
    assert _logins(gateway) == {"synced": 1.0, "pending": 0.0}
    await gateway.stop()


async def test_a_login_past_the_wait_gets_the_rest_as_exists(dovecot, tmp_path, nursery):
    gateway = await _gateway(dovecot, tmp_path, nursery, "0s")

    def run() -> tuple[list[int], list[int]]:
        client = Raw(gateway.port, gateway.user, gateway.password)   # answered OK at once
        first = _exists(client.cmd("SELECT INBOX")[0])
        seen = list(first)

        def all_there() -> bool:
            seen.extend(_exists(client.cmd("NOOP")[0]))
            return bool(seen) and seen[-1] == COUNT

        polling.wait_for(all_there, f"an untagged {COUNT} EXISTS after the sync")
        fetched = client.cmd("FETCH 1:* (FLAGS)")[0]
        assert len(fetched) == COUNT, fetched
        client.close()
        return first, seen

    first, seen = await trio.to_thread.run_sync(run)
    assert len(first) == 1 and 0 <= first[0] <= COUNT   # whatever was stored at that moment
    assert seen == sorted(seen) and seen[-1] == COUNT
    assert _logins(gateway) == {"synced": 0.0, "pending": 1.0}
    await gateway.stop()


async def test_a_long_sync_is_announced_in_steps_to_an_idle_session(dovecot, tmp_path, nursery,
                                                                     monkeypatch):
    """New mail stored during a long sync is announced batch by batch, not only at its end: a
    session in IDLE, logged in past the wait, gets `* 40 EXISTS` while the sync's second batch
    is held before its commit (so the sync cannot have ended), then the rest; EXISTS only grow
    and the UIDs are 1..TOTAL in order."""
    total, batch = 120, 40
    monkeypatch.setattr(ingest_batches, "BATCH_MESSAGES", batch)
    user, password = dovecot.add_user()
    for n in range(total):
        dovecot.deliver(user, message(n))
    gateway = GatewayHandle(dovecot, tmp_path, user, password, login_sync_wait="0s",
                            poll_interval="600s")
    await gateway.start(nursery)
    store = gateway.service.store
    commit = store.ingest_many
    idling, release = trio.Event(), trio.Event()
    batches: list[int] = []

    async def held(account_id, items):   # batch 1 waits for the IDLE, batch 2 for the release
        batches.append(len(items))
        await (idling if len(batches) == 1 else release).wait()
        return await commit(account_id, items)

    monkeypatch.setattr(store, "ingest_many", held)

    def run() -> tuple[list[int], list[int], list[bytes]]:
        client = Raw(gateway.port, gateway.user, gateway.password)   # answered OK at once
        try:
            assert _exists(client.cmd("SELECT INBOX")[0]) == [0]   # batch 1 not committed
            client.sock.sendall(b"i IDLE\r\n")
            assert client.file.readline().startswith(b"+ ")
            trio.from_thread.run_sync(idling.set)
            during = _idle_exists(client, batch)
            trio.from_thread.run_sync(release.set)
            after = _idle_exists(client, total)
            client.sock.sendall(b"DONE\r\n")
            while not (line := client.file.readline()).startswith(b"i "):
                assert re.fullmatch(rb"\* \d+ RECENT\r\n", line), line   # after the last EXISTS
            assert line.startswith(b"i OK"), line
            uids = client.cmd("FETCH 1:* (UID)")[0]
            client.close()
            return during, after, uids
        finally:
            trio.from_thread.run_sync(release.set)

    during, after, uids = await trio.to_thread.run_sync(run)
    assert during == [batch]   # told while batch 2 was held: the sync had not ended
    assert after == sorted(after) and after[-1] == total and after[0] > batch, after
    assert uids == [b"* %d FETCH (UID %d)" % (n, n) for n in range(1, total + 1)]
    assert batches == [batch] * (total // batch)
    await gateway.stop()


def _idle_exists(client: Raw, until: int) -> list[int]:
    """EXISTS counts read during IDLE up to the one of `until` messages."""
    seen: list[int] = []
    while not seen or seen[-1] < until:
        seen += _exists([client.file.readline().rstrip(b"\r\n")])
    return seen


@pytest.mark.parametrize(("written", "error"), [
    ("-1s", None), ("11m", "expected 0s to 10m")])
def test_the_wait_outside_0_to_10m_is_refused(written: str, error: str | None):
    text = """\
listeners:
  - {name: gw, protocol: imap, address: 127.0.0.1:1143, mode: gateway}
upstreams:
  main: {host: 127.0.0.1, pop3: {port: 110}}
routes:
  - {match: "*", upstream: main}
gateway:
  login_sync_wait: %s
""" % written
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(text)
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith("line 8: gateway.login_sync_wait: "), caught.value.errors
    if error is not None:
        assert caught.value.errors[0].endswith(error), caught.value.errors
