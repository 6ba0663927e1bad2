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
