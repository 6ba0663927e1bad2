"""The fetcher against hostile or broken POP3 upstreams (support/hostile_pop3.py), on both stores.

For each misbehaviour: no wedge (the account's next sync works), nothing the user owns lost, no
message stored twice, other accounts not held up, the limit named and configurable
(``gateway.limits.pop3_reply_timeout``, ``pop3_min_rate``, ``max_message_bytes``), logs without
the password, and a count in the sync's result for the metric
(mailproxy_gateway_upstream_anomalies_total).
"""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import yaml

from proxy import config as config_mod
from proxy.gateway.account_locks import AccountLocks
from proxy.gateway.fetcher import sync_account
from proxy.session.failures import Failure
from proxy.session.upstream import UpstreamError
from support.hostile_pop3 import HostilePop3, drip, endless_body, endless_line, reply, reset, stall
from support.logrecords import caught
from support.polling import wait_until

from .helpers import config_dict, stored

USER, PASSWORD = "victim@example.com", "pa55-w0rd-never-logged"
MESSAGES = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, 6)]
# pop3_reply_timeout of these tests: short, but long enough for an honest reply at load 40
REPLY_TIMEOUT = "5s"
NEVER = 120.0   # a bound only a build that waits for ever reaches (the limits below: 5-7 s)


def limits_config(port: int, store: str, retention: str = "keep", **limits) -> config_mod.Config:
    raw = config_dict(port, store, retention)
    raw["gateway"]["limits"] = {"pop3_reply_timeout": REPLY_TIMEOUT, "pop3_min_rate": "1KiB",
                                **limits}
    return config_mod.loads(yaml.safe_dump(raw))


@pytest.fixture
def log_records():
    with caught(logging.DEBUG) as records:
        yield records
    assert not any(PASSWORD in r.getMessage() or PASSWORD in str(getattr(r, "fields", ""))
                   for r in records), "the password reached a log line"


async def sync(server: HostilePop3, store_url: str, store, retention: str = "keep",
               locks: AccountLocks | None = None, user: str = USER, **limits):
    config = limits_config(server.port, store_url, retention, **limits)
    with trio.fail_after(NEVER):
        return await sync_account(config, store, "dc", user, PASSWORD, locks=locks)


async def failing_sync(server, store_url, store, failure: Failure, **options) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await sync(server, store_url, store, **options)
    assert info.value.failure is failure, info.value
    return info.value


def bodies(got: dict[str, tuple[int, bytes]]) -> list[bytes]:
    return sorted(body for _, body in got.values())


async def test_slowloris_body_fails_in_time_and_the_next_sync_gets_the_rest(
        nursery, store_url, store, log_records):
    """A RETR dripping a byte every 20 ms: the sync fails (TIMEOUT) within pop3_reply_timeout
    plus a second per pop3_min_rate bytes, instead of holding the account for ever (each byte
    used to restart a 120 s timer); what came before is kept, the next sync gets the rest."""
    server = HostilePop3(MESSAGES, USER, PASSWORD)
    server.script(b"RETR", 3, drip(0.02), once=True)
    await server.start(nursery)
    error = await failing_sync(server, store_url, store, Failure.TIMEOUT)
    assert "RETR 3" in error.detail
    assert bodies(await stored(store, USER)) == MESSAGES[:2]
    result = await sync(server, store_url, store)
    assert result.new == 3 and bodies(await stored(store, USER)) == MESSAGES


async def test_a_slowloris_account_does_not_hold_up_another(nursery, store_url, store):
    """Two accounts, one upstream dripping for ever: the other's sync ends while it drips. The
    dripping sync's reply timeout is an hour, so the order is the test, never how long the
    other's honest sync takes on a loaded machine (that one failing in time is
    test_slowloris_body_fails_in_time_and_the_next_sync_gets_the_rest)."""
    slow = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    slow.script(b"RETR", 2, drip(0.02))
    fine = HostilePop3(MESSAGES[2:], "other@example.com", PASSWORD)
    await slow.start(nursery)
    await fine.start(nursery)
    order: list[str] = []

    async def slow_sync() -> None:
        await sync(slow, store_url, store, pop3_reply_timeout="1h")
        order.append("slow")   # (never: cancelled below while it drips)

    async with trio.open_nursery() as both:
        both.start_soon(slow_sync)
        await wait_until(lambda: slow.commands.count(b"RETR") == 2, "the slow RETR dripping")
        result = await sync(fine, store_url, store, user="other@example.com")
        order.append(f"fine:{result.new}")
        assert slow.commands.count(b"RETR") == 2   # (still in the dripping RETR)
        both.cancel_scope.cancel()
    assert order == ["fine:3"]


async def test_a_reply_never_terminated_is_bounded(nursery, store_url, store):
    """RETR answered with lines as fast as they are read, never the terminator: memory stays
    under max_message_bytes (the body is dropped past it) and the time under pop3_reply_timeout
    plus max_message_bytes at pop3_min_rate; then the next sync works."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD)
    server.script(b"RETR", 2, endless_body(), once=True)
    await server.start(nursery)
    await failing_sync(server, store_url, store, Failure.TIMEOUT, max_message_bytes="64KiB",
                       pop3_min_rate="64KiB")
    assert bodies(await stored(store, USER)) == MESSAGES[:1]
    assert (await sync(server, store_url, store)).new == 2


async def test_message_over_max_message_bytes_is_left_upstream(nursery, store_url, store,
                                                             log_records):
    """A message over max_message_bytes is read, dropped and left upstream (never DELEd, even
    under delete-after-fetch); the others are stored and deleted upstream; counted too_big."""
    big = b"Subject: big\r\n\r\n" + b"b" * 100 + b"\r\n" + b"B" * 70_000 + b"\r\n"
    server = HostilePop3([MESSAGES[0], big, MESSAGES[1]], USER, PASSWORD)
    await server.start(nursery)
    result = await sync(server, store_url, store, "delete-after-fetch", max_message_bytes="64KiB")
    assert (result.new, result.deleted_upstream) == (2, 2)
    assert result.anomalies == {"too_big": 1}
    assert bodies(await stored(store, USER)) == sorted(MESSAGES[:2])
    assert server.messages == [big]
    assert any(r.getMessage() == "gateway_fetch_message_too_big" for r in log_records)
    again = await sync(server, store_url, store, "delete-after-fetch", max_message_bytes="64KiB")
    assert (again.new, again.anomalies) == (0, {"too_big": 1}) and server.messages == [big]


async def test_bad_and_repeated_uidls_are_fetched_by_digest(nursery, store_url, store, log_records):
    """RFC 1939 7: a unique-id is 1 to 70 characters 0x21-0x7E. A message whose UIDL breaks
    that, or shares another's (both), is keyed by its digest: stored once, not lost, and the
    rest of the account syncs (one such line used to fail every sync of the account for ever)."""
    uidls = [b"ok-1", b"caf\xc3\xa9", b"ok-1", b"a" * 71, b"ok-5"]
    server = HostilePop3(MESSAGES, USER, PASSWORD, uidls=uidls)
    await server.start(nursery)
    result = await sync(server, store_url, store)
    assert result.new == 5 and result.anomalies == {"bad_uidl": 4}
    got = await stored(store, USER)
    assert bodies(got) == MESSAGES
    assert sorted(u for u in got if not u.startswith("sha256:")) == ["ok-5"]
    assert any(r.getMessage() == "gateway_fetch_bad_uidl" for r in log_records)
    assert (await sync(server, store_url, store)).new == 0
    assert await stored(store, USER) == got
    # delete-after-fetch removes them upstream too, once stored
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (0, 5) and server.messages == []


async def test_messages_sharing_a_uidl_listed_in_another_order_are_not_stored_twice(
        nursery, store_url, store):
    """Two messages under one UIDL (RFC 1939 7 broken), then listed the other way round: the
    first was keyed by the UIDL and the second by its digest, so after the swap the first
    was fetched by its digest and stored a second time. Both are keyed by digest now."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD, uidls=[b"same", b"same", b"ok-3"])
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 3
    server.messages[:2] = server.messages[1::-1]   # the same UIDLs, the messages swapped
    result = await sync(server, store_url, store)
    assert (result.new, result.anomalies) == (0, {"bad_uidl": 2})
    assert bodies(await stored(store, USER)) == MESSAGES[:3]
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (0, 3) and server.messages == []


async def test_a_message_whose_uidl_stops_being_shared_is_not_stored_again(
        nursery, store_url, store):
    """Two messages under one UIDL are both keyed by their digest; once another client deleted
    the second upstream, the first is listed alone under that UIDL, which the store does not
    know: it was fetched and stored a second time. Its digest is known, so it is the same
    message: not stored again, and delete-after-fetch DELEs it by that digest."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD, uidls=[b"same", b"same", b"ok-3"])
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 3
    del server.messages[1], server.uidls[1]   # another POP3 client DELEd message 2
    result = await sync(server, store_url, store)
    assert (result.new, result.anomalies) == (0, {})
    assert bodies(await stored(store, USER)) == MESSAGES[:3]
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (0, 2) and server.messages == []
    assert bodies(await stored(store, USER)) == MESSAGES[:3]


async def test_a_refused_retr_is_asked_again_by_the_next_sync(nursery, store_url, store):
    """RETR -ERR (a temporary failure upstream): the message is skipped and counted, and the
    listing does not settle, so the next sync of the same listing asks again (it used to end at
    once, `keep` having found the listing unchanged, until new mail changed it)."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD)
    server.script(b"RETR", 2, reply(b"-ERR [SYS/TEMP] try later\r\n"), once=True)
    await server.start(nursery)
    locks = AccountLocks()
    result = await sync(server, store_url, store, locks=locks)
    assert (result.new, result.anomalies) == (2, {"retr_refused": 1})
    result = await sync(server, store_url, store, locks=locks)
    assert result.new == 1 and bodies(await stored(store, USER)) == MESSAGES[:3]


async def test_a_refused_retr_does_not_mark_digest_keyed_mail_deleted_upstream(
        nursery, store_url, store):
    """A server without UIDL (every message keyed by its digest): a sync where RETR 2 is
    refused cannot tell which digest message 2 has, so it must not record the stored copy of
    message 2 as deleted upstream; it did, and delete-after-fetch then never DELEd message 2
    (fetched_at leaves out what was deleted upstream): downloaded again on every sync, and the
    upstream mailbox kept it for ever."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD, uidl=False)
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 3
    server.script(b"RETR", 2, reply(b"-ERR [SYS/TEMP] try later\r\n"), once=True)
    result = await sync(server, store_url, store)
    assert (result.new, result.anomalies) == (0, {"retr_refused": 1})
    result = await sync(server, store_url, store, "delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (0, 3) and server.messages == []
    assert bodies(await stored(store, USER)) == MESSAGES[:3]


async def test_reset_mid_download_keeps_what_was_complete(nursery, store_url, store):
    """A connection reset inside RETR 3's body: messages 1 and 2 are kept, nothing partial."""
    server = HostilePop3(MESSAGES, USER, PASSWORD)
    server.script(b"RETR", 3, reset(after=20), once=True)
    await server.start(nursery)
    await failing_sync(server, store_url, store, Failure.UPSTREAM)
    assert bodies(await stored(store, USER)) == MESSAGES[:2]
    assert (await sync(server, store_url, store)).new == 3
    assert bodies(await stored(store, USER)) == MESSAGES


@pytest.mark.parametrize("number", [2, 3], ids=["middle", "last"])
async def test_a_body_not_dot_stuffed_is_not_stored_cut(nursery, store_url, store, number):
    """RFC 1939 3: a server that does not dot-stuff a line "." ends the body there; the rest
    breaks the framing. The body cut short used to be committed with the ones before it (and
    never fetched again: its UIDL was known; under delete-after-fetch its whole upstream copy
    was DELEd later). Now it is dropped; the next sync, once the server behaves, stores it whole."""
    messages = MESSAGES[:3]
    server = HostilePop3(messages, USER, PASSWORD)
    dotted = messages[number - 1] + b".\r\nthe rest of it\r\n"
    server.messages[number - 1] = dotted
    raw = b"+OK\r\n" + dotted + b".\r\n"   # not stuffed
    server.script(b"RETR", number, reply(raw), once=True)
    await server.start(nursery)
    await failing_sync(server, store_url, store, Failure.PROTOCOL)
    assert bodies(await stored(store, USER)) == sorted(messages[:number - 1])
    assert (await sync(server, store_url, store, "delete-after-fetch")).new == 4 - number
    whole = [*messages[:number - 1], dotted, *messages[number:]]
    assert bodies(await stored(store, USER)) == sorted(whole) and server.messages == []


def _cut_then_rest_once_asked(first: bytes, rest: bytes):
    """RETR answered with `first` (a body ended early by a line "." not dot-stuffed), and
    `rest` only once the client has sent its next command: the bytes after a cut arrive late."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await stream.send_all(first)
        await stream.socket.recv(1, socket.MSG_PEEK)   # the next command is there (not read)
        await stream.send_all(rest)
        return True
    return action


async def test_a_last_body_not_dot_stuffed_is_not_stored_when_the_rest_comes_late(
        nursery, store_url, store):
    """The last RETR's body cut by a line "." not dot-stuffed, the rest of it arriving after
    the client read the cut reply (nothing buffered yet): that body was committed (only QUIT's
    reply then broke), stored cut for good under its UIDL, and the next delete-after-fetch sync
    DELEd the whole upstream copy. Now the reply after the last body (a NOOP's) must frame
    right before it is stored."""
    messages = MESSAGES[:3]
    server = HostilePop3(messages, USER, PASSWORD)
    dotted = messages[2] + b".\r\nthe rest of it\r\n"
    server.messages[2] = dotted
    server.script(b"RETR", 3, _cut_then_rest_once_asked(
        b"+OK\r\n" + messages[2] + b".\r\n", b"the rest of it\r\n.\r\n"), once=True)
    await server.start(nursery)
    await failing_sync(server, store_url, store, Failure.PROTOCOL)
    assert bodies(await stored(store, USER)) == sorted(messages[:2])
    assert (await sync(server, store_url, store, "delete-after-fetch")).new == 1
    assert bodies(await stored(store, USER)) == sorted([*messages[:2], dotted])
    assert server.messages == []


@pytest.mark.parametrize("command, number, action, failure", [
    (b"GREETING", None, endless_line(), Failure.PROTOCOL),   # no CRLF: line_too_long at 8 KiB
    (b"UIDL", None, endless_line(b"+OK\r\n1 "), Failure.PROTOCOL),   # past max_message_bytes
    (b"USER", None, stall(), Failure.TIMEOUT),
    (b"PASS", None, drip(0.02, b"+OK\r\n"), Failure.TIMEOUT),   # a status line, a byte at a time
    (b"RETR", 1, reply(b"-ERR\r\n", hang_up=True), Failure.UPSTREAM),
], ids=["endless-greeting", "endless-listing", "stall-after-user", "slowloris-status",
        "err-then-reset"])
async def test_broken_sessions_fail_in_bounded_time_then_sync(nursery, store_url, store,
                                                           log_records, command, number, action,
                                                           failure):
    server = HostilePop3(MESSAGES[:2], USER, PASSWORD)
    server.script(command, number, action, once=True)
    await server.start(nursery)
    await failing_sync(server, store_url, store, failure, max_message_bytes="64KiB")
    assert (await sync(server, store_url, store)).new == 2
    assert bodies(await stored(store, USER)) == MESSAGES[:2]


async def test_lying_sizes_bare_lf_and_nul_are_stored_as_sent(nursery, store_url, store):
    """LIST and STAT sizes that lie do not matter (RETR's body is what counts); bare LF and NUL
    inside a message are kept byte for byte."""
    odd = [b"Subject: lf\nX: 1\n\nbare\nlf\r\n", b"Subject: nul\r\n\r\na\x00b\r\n"]
    server = HostilePop3(odd, USER, PASSWORD, sizes=[5, 10**9], uidl=False)
    await server.start(nursery)
    assert (await sync(server, store_url, store)).new == 2
    assert bodies(await stored(store, USER)) == sorted(odd)


def test_limits_are_configuration(tmp_path):
    raw = config_dict(1, str(tmp_path / "s.db"))
    raw["gateway"]["limits"] = {"pop3_reply_timeout": "0s"}
    with pytest.raises(config_mod.ConfigError, match="pop3_reply_timeout"):
        config_mod.loads(yaml.safe_dump(raw))
    limits = config_mod.loads(yaml.safe_dump(config_dict(1, str(tmp_path / "s.db")))).gateway.limits
    assert (limits.pop3_reply_timeout, limits.pop3_min_rate, limits.max_message_bytes) == (
        120.0, 64 * 1024, 100 * 1024 * 1024)


async def test_a_message_that_always_times_out_is_passed_over_after_two_syncs(
        nursery, store_url, store):
    """RETR 2 never ends (its reply times out every time) and every sync asked it first: no
    message listed after it ever arrived. The account's syncs (one AccountLocks, as the gateway
    shares) ask it again once, then leave it upstream (passed_over, never DELEd) for PASS_OVER,
    so message 3 arrives; after PASS_OVER it is asked again (twice: STRIKES)."""
    server = HostilePop3(MESSAGES[:3], USER, PASSWORD)
    server.script(b"RETR", 2, endless_body())   # every time
    await server.start(nursery)
    locks = AccountLocks()
    options = {"max_message_bytes": "64KiB", "pop3_min_rate": "64KiB", "locks": locks}
    for _ in range(2):   # a message that timed out once is asked again (a link slow once)
        await failing_sync(server, store_url, store, Failure.TIMEOUT, **options)
        assert bodies(await stored(store, USER)) == MESSAGES[:1]
    asked = server.commands.count(b"RETR")
    result = await sync(server, store_url, store, **options)
    assert (result.new, result.anomalies) == (1, {"passed_over": 1})
    assert server.commands.count(b"RETR") == asked + 1   # message 3 only
    assert bodies(await stored(store, USER)) == [MESSAGES[0], MESSAGES[2]]
    failures = locks.failures[("dc", USER)]   # the pass-over has run out: asked again, twice
    locks.failures[("dc", USER)] = {uidl: (strikes, 0.0) for uidl, (strikes, _) in failures.items()}
    for _ in range(2):
        await failing_sync(server, store_url, store, Failure.TIMEOUT, **options)
    # passed over again, and never DELEd: it was not stored
    result = await sync(server, store_url, store, "delete-after-fetch", **options)
    assert (result.new, result.anomalies, result.deleted_upstream) == (0, {"passed_over": 1}, 2)
    assert server.messages == [MESSAGES[1]]


async def test_a_message_too_big_twice_is_not_downloaded_again(nursery, store_url, store):
    """A message over max_message_bytes is read and dropped by a sync; after two syncs the
    account's syncs stop downloading it (passed_over) rather than reading it whole each poll."""
    big = b"Subject: big\r\n\r\n" + b"B" * 70_000 + b"\r\n"
    server = HostilePop3([MESSAGES[0], big], USER, PASSWORD)
    await server.start(nursery)
    locks = AccountLocks()
    results = [await sync(server, store_url, store, locks=locks, max_message_bytes="64KiB")
               for _ in range(3)]
    assert [(r.new, r.anomalies) for r in results] == [
        (1, {"too_big": 1}), (0, {"too_big": 1}), (0, {"passed_over": 1})]
    assert server.commands.count(b"RETR") == 3 and server.messages == [MESSAGES[0], big]
