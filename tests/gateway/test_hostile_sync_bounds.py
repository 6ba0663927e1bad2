"""A sync's size and time against POP3 upstreams that are big, slow or hostile, on both stores:
a listing has its own bound (``gateway.limits.max_listing_bytes``), not the message's, and a
sync its own time (``gateway.limits.sync_budget``) after which it ends cleanly: what it fetched
is stored, nothing else is DELEd, and the next sync goes on from there.
"""

from __future__ import annotations

import pytest
import trio
import yaml

from proxy import config as config_mod
from proxy.gateway.account_locks import AccountLocks
from proxy.gateway.fetcher import sync_account
from proxy.gateway.service import open_gateway
from proxy.metrics import Metrics
from proxy.session.failures import Failure
from support.hostile_pop3 import HostilePop3, late, stall

from .helpers import config_dict, stored, upstream_messages
from .test_hostile_upstream import MESSAGES, NEVER, PASSWORD, USER, bodies, failing_sync, limits_config, sync

PIPELINING = (b"USER", b"UIDL", b"PIPELINING")


def many(count: int) -> tuple[list[bytes], list[bytes]]:
    """`count` small messages and their UIDLs of 60 characters (a listing of ~64 bytes each)."""
    messages = [b"Subject: n%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(count)]
    return messages, [b"%060d" % i for i in range(count)]


async def test_a_listing_longer_than_max_message_bytes_syncs(nursery, store_url, store):
    """The UIDL listing of a mailbox of many small messages is longer than its largest
    message: with max_message_bytes of 1KiB it was bounded by that and every sync failed
    PROTOCOL (an operator's 1MiB under `keep` from ~25,000 messages on: no new mail ever)."""
    messages, uidls = many(40)   # a listing of ~2.6 KB
    server = HostilePop3(messages, USER, PASSWORD, uidls=uidls)
    await server.start(nursery)
    result = await sync(server, store_url, store, max_message_bytes="1KiB")
    assert result.new == 40 and bodies(await stored(store, USER)) == sorted(messages)


async def test_a_dovecot_mailbox_whose_listing_passes_max_message_bytes_syncs(
        dovecot, user, store_url, store):
    """The same against real Dovecot: 100 messages (a UIDL listing of ~2 KB) under
    max_message_bytes 1KiB are all stored, byte for byte as Dovecot serves them."""
    name, password = user
    for i in range(100):
        dovecot.deliver(name, b"Subject: d%d\r\n\r\nbody %d\r\n" % (i, i))
    upstream = upstream_messages(dovecot.host, dovecot.pop3_port, name, password)
    assert sum(len(f"{i} {u}\r\n") for i, u in enumerate(upstream, 1)) > 1024   # (the case)
    raw = config_dict(dovecot.pop3_port, store_url)
    raw["gateway"]["limits"] = {"max_message_bytes": "1KiB"}
    config = config_mod.loads(yaml.safe_dump(raw))
    with trio.fail_after(NEVER):
        result = await sync_account(config, store, "dc", name, password)
    assert result.new == 100
    assert {u: body for u, (_, body) in (await stored(store, name)).items()} == upstream


async def test_a_listing_over_max_listing_bytes_fails_the_sync(nursery, store_url, store):
    messages, uidls = many(40)
    server = HostilePop3(messages, USER, PASSWORD, uidls=uidls)
    await server.start(nursery)
    error = await failing_sync(server, store_url, store, Failure.PROTOCOL,
                               max_listing_bytes="2KiB")
    assert "max_listing_bytes (2048)" in error.detail
    assert await stored(store, USER) == {}
    assert (await sync(server, store_url, store, max_listing_bytes="4KiB")).new == 40


def test_the_new_limits_are_configuration(tmp_path):
    def loaded(**limits):
        raw = config_dict(1, str(tmp_path / "s.db"))
        raw["gateway"]["limits"] = limits
        return config_mod.loads(yaml.safe_dump(raw)).gateway.limits

    defaults = loaded()
    assert (defaults.max_listing_bytes, defaults.sync_budget) == (64 * 1024 * 1024, 900.0)
    assert (loaded(max_listing_bytes="1MiB", sync_budget="1h").max_listing_bytes,
            loaded(sync_budget="1h").sync_budget) == (1024 * 1024, 3600.0)
    for key, value in (("max_listing_bytes", "1000"), ("sync_budget", "0s"),
                       ("sync_budget", "2d")):
        with pytest.raises(config_mod.ConfigError, match=key):
            loaded(**{key: value})


@pytest.mark.parametrize("capa", [(b"USER", b"UIDL"), PIPELINING], ids=["serial", "pipelined"])
async def test_a_server_stalling_a_reply_ends_the_sync_at_its_budget(nursery, store_url, store,
                                                                   capa):
    """RETR 3 never answered, pop3_reply_timeout an hour (a server answering each reply just
    under the timeout: a sync of N messages took N x timeout, holding the account's sync lock).
    The sync ends at sync_budget as a success: what it fetched before is stored (message 1;
    message 2's body is only trusted once the reply after it is framed right, so the next sync
    asks it again), nothing is DELEd (delete-after-fetch: the session is dropped without QUIT,
    RFC 1939 6), and the next sync fetches the rest, then DELEs all."""
    server = HostilePop3(MESSAGES, USER, PASSWORD, capa=capa)
    server.script(b"RETR", 3, stall(), once=True)
    await server.start(nursery)
    options = {"pop3_reply_timeout": "1h", "sync_budget": "2s"}
    result = await sync(server, store_url, store, "delete-after-fetch", **options)
    assert (result.new, result.budget_spent, result.deleted_upstream) == (1, True, 0)
    assert bodies(await stored(store, USER)) == MESSAGES[:1]
    assert server.messages == MESSAGES and b"DELE" not in server.commands
    # (the next sync with the default budget: it must not race a 2 s one on a loaded machine)
    rest = await sync(server, store_url, store, "delete-after-fetch")
    assert (rest.new, rest.budget_spent, rest.deleted_upstream) == (4, False, 5)
    assert bodies(await stored(store, USER)) == MESSAGES and server.messages == []


@pytest.mark.parametrize("capa", [(b"USER", b"UIDL"), PIPELINING], ids=["serial", "pipelined"])
async def test_a_big_first_download_completes_over_several_syncs(nursery, store_url, store,
                                                                capa):
    """An honest server slower than one sync's budget (each RETR 0.3 s late, 8 messages, a
    budget of 1 s): each sync takes it further (stores or DELEs) and ends; the syncs together
    store all of them once, and a message is never DELEd before it is stored."""
    messages, _ = many(8)
    server = HostilePop3(messages, USER, PASSWORD, capa=capa)
    server.script(b"RETR", None, late(0.3))
    await server.start(nursery)
    results = []
    with trio.fail_after(NEVER):
        while not results or results[-1].budget_spent:
            result = await sync(server, store_url, store, "delete-after-fetch", sync_budget="1s")
            results.append(result)
            have = sorted(body for _, body in (await stored(store, USER)).values())
            assert have == sorted(messages[:len(have)])   # in order, none twice
            assert all(m in server.messages for m in messages if m not in have)   # never DELEd
            assert result.new or result.deleted_upstream   # further each time
    assert results[0].budget_spent
    assert sum(r.new for r in results) == 8 and bodies(await stored(store, USER)) == sorted(messages)
    assert server.messages == []


async def test_a_login_check_against_a_stalling_upstream_uses_the_configured_timeout(
        nursery, store_url):
    """The gateway's LOGIN is checked against the POP3 upstream (gateway/auth.py): an upstream
    that never answers USER made the login wait the client's 120 s default per reply, not
    gateway.limits.pop3_reply_timeout (5 s here); it answers TEMPFAIL within that now. The
    service's own Authenticator, as open_gateway builds it."""
    server = HostilePop3(MESSAGES[:1], USER, PASSWORD)
    server.script(b"USER", None, stall(), once=True)
    await server.start(nursery)
    config = limits_config(server.port, store_url)
    async with open_gateway(config, Metrics()) as service:
        with trio.fail_after(60):   # (the 120 s default is past it; 5 s is well within)
            failure = await service.auth.verify("dc", config.upstreams["dc"], USER,
                                                PASSWORD.encode())
        assert failure is Failure.AUTH_TEMPFAIL
        assert await service.auth.verify("dc", config.upstreams["dc"], USER,
                                         PASSWORD.encode()) is None


async def test_a_sync_cut_by_its_budget_is_counted_as_such(nursery, store_url):
    """mailproxy_gateway_syncs_total counts a sync its budget cut as result="budget_spent"
    (it counted "ok", though the mailbox was not all fetched), and one that ends as "ok". The
    service's own account fetcher (AccountFetcher), as a login or a poll runs it."""
    from proxy.gateway.account_fetcher import AccountFetcher

    server = HostilePop3(MESSAGES, USER, PASSWORD)
    server.script(b"RETR", 3, stall(), once=True)
    await server.start(nursery)
    budgets = [limits_config(server.port, store_url, pop3_reply_timeout="1h", sync_budget="2s"),
               # (the next sync with the default budget: it must not race a 2 s one under load)
               limits_config(server.port, store_url)]
    counted = []
    for config in budgets:
        async with open_gateway(config, Metrics()) as service:
            fetcher = AccountFetcher(service, "dc", USER)
            fetcher.password = PASSWORD
            with trio.fail_after(NEVER):
                await fetcher._sync_once()
            server.scripts.clear()   # (a loaded machine may spend the 2 s before RETR 3)
            counted.append({result: service.metrics.registry.get_sample_value(
                "mailproxy_gateway_syncs_total", {"result": result})
                for result in ("ok", "budget_spent")})
            if len(counted) == 2:
                assert bodies(await stored(service.store, USER)) == MESSAGES
    assert counted == [{"ok": None, "budget_spent": 1.0}, {"ok": 1.0, "budget_spent": None}]


async def test_a_server_stalling_a_dele_ends_the_sync_at_its_budget(nursery, store_url, store):
    """20 messages stored, then delete-after-fetch against a server that never answers DELE 17
    (the second pipelined window), pop3_reply_timeout an hour: the sync ends at sync_budget.
    Either the second window was cut (no QUIT: no DELE took effect) or, on a machine so loaded
    the budget was spent after the first window, only that window was sent and QUIT applied it;
    the store keeps all 20 and the next sync DELEs the rest."""
    messages, _ = many(20)
    server = HostilePop3(messages, USER, PASSWORD, capa=PIPELINING)
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 20
    server.script(b"DELE", 17, stall(), once=True)
    options = {"pop3_reply_timeout": "1h", "sync_budget": "2s"}
    result = await sync(server, store_url, store, "delete-after-fetch", **options)
    assert result.budget_spent and result.deleted_upstream in (0, 16)
    assert server.messages == messages[result.deleted_upstream:]
    rest = await sync(server, store_url, store, "delete-after-fetch")   # (default budget)
    assert (rest.budget_spent, rest.deleted_upstream) == (False, 20 - result.deleted_upstream)
    assert server.messages == [] and bodies(await stored(store, USER)) == sorted(messages)


@pytest.mark.parametrize("uidls", ["none", "bad"])
async def test_a_server_without_uidl_slower_than_the_budget_gets_everything_over_several_syncs(
        nursery, store_url, store, uidls):
    """Without UIDL every sync reads every message (keyed by digest): one whose budget ran out
    always stopped at the same message, and the mail after it never arrived. The account's
    next sync (one AccountLocks, as the gateway shares) starts where the last one stopped.
    The same for UIDLs that break RFC 1939 7 (71 characters here), also keyed by digest."""
    messages, _ = many(8)
    server = HostilePop3(messages, USER, PASSWORD, uidl=uidls == "bad",
                         uidls=[b"%071d" % i for i in range(8)] if uidls == "bad" else None)
    server.script(b"RETR", None, late(0.3))
    await server.start(nursery)
    locks = AccountLocks()
    syncs = 0
    with trio.fail_after(NEVER):
        while len(await stored(store, USER)) < 8:
            assert syncs < 16, f"{len(await stored(store, USER))} of 8 stored after {syncs} syncs"
            result = await sync(server, store_url, store, locks=locks, sync_budget="1s")
            syncs += 1
            assert result.new or result.budget_spent
    assert syncs > 1 and bodies(await stored(store, USER)) == sorted(messages)
