"""Fetcher cases Dovecot cannot produce: no UIDL, a RETR cut short, malformed replies, a failing QUIT.

`FakePop3` is a deliberately small real POP3 server (RFC 1939 USER/PASS/STAT/LIST/RETR/DELE/QUIT,
optional CAPA, UIDL and AUTH PLAIN) on a loopback port, with switches for each misbehaviour.
"""

from __future__ import annotations

import base64
import functools
import logging

import pytest
import trio

from proxy.gateway import fetcher, pop3_client
from proxy.gateway.fetcher import sync_account
from proxy.pop3 import writer
from proxy.session.failures import Failure
from proxy.session.upstream import UpstreamError
from proxy.store import open_store
from support.logrecords import caught

from .helpers import make_config, stored

USER, PASSWORD = "fake@example.com", "secret"
MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n.dotted\r\n",
            b"Subject: two\r\n\r\nsecond\r\n",
            b"Subject: one\r\n\r\nfirst\r\n.dotted\r\n",      # byte-identical to the first
            b"Subject: four\r\n\r\n" + b"x" * 5000 + b"\r\n",
            b"Subject: five\r\n\r\nfifth\r\n"]


class FakePop3:
    def __init__(self, messages: list[bytes], *, uidl: bool = False, capa: list[bytes] | None = None,
                 cut_retr: int | None = None, uidl_reply: bytes | None = None,
                 retr_reply: bytes | None = None, fail_quit: bool = False):
        self.messages = list(messages)
        self.uidl, self.capa, self.cut_retr = uidl, capa, cut_retr
        self.uidl_reply, self.retr_reply, self.fail_quit = uidl_reply, retr_reply, fail_quit
        self.commands: list[bytes] = []
        self.hang_up = False
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0,
                                                          host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer, deleted = b"", set()
        self.hang_up = False
        await stream.send_all(writer.ok(b"fake ready"))
        while True:
            while b"\r\n" not in buffer:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
            line, buffer = buffer.split(b"\r\n", 1)
            name, *args = line.split(b" ")
            self.commands.append(name.upper())
            reply = self.reply(name.upper(), args, deleted)
            if reply is None:   # hang up
                await stream.aclose()
                return
            await stream.send_all(reply)
            if self.hang_up:   # after a broken reply the server goes away
                await stream.aclose()
                return
            if name.upper() == b"QUIT":
                self.messages = [m for i, m in enumerate(self.messages, 1) if i not in deleted]
                await stream.aclose()
                return

    def reply(self, name: bytes, args: list[bytes], deleted: set[int]) -> bytes | None:
        live = [i for i in range(1, len(self.messages) + 1) if i not in deleted]
        if name == b"CAPA" and self.capa is not None:
            return writer.ok() + writer.multiline(self.capa)
        if name in (b"USER", b"PASS"):
            ok = args[0].decode() == (USER if name == b"USER" else PASSWORD)
            return writer.ok() if ok else writer.err(b"nope", b"AUTH")
        if name == b"AUTH" and args[:1] == [b"PLAIN"]:
            _, user, password = base64.b64decode(args[1]).split(b"\0")
            ok = (user.decode(), password.decode()) == (USER, PASSWORD)
            return writer.ok() if ok else writer.err(b"nope", b"AUTH")
        if name == b"STAT":
            return writer.ok(b"%d %d" % (len(live), sum(len(self.messages[i - 1]) for i in live)))
        if name == b"LIST":
            return writer.ok() + writer.multiline(
                [b"%d %d" % (i, len(self.messages[i - 1])) for i in live])
        if name == b"UIDL" and self.uidl_reply is not None:
            return self.uidl_reply
        if name == b"UIDL" and self.uidl:
            return writer.ok() + writer.multiline([b"%d id-%d" % (i, i) for i in live])
        if name == b"RETR":
            number = int(args[0])
            if self.retr_reply is not None:
                self.hang_up = True
                return self.retr_reply
            body = writer.multiline(self.messages[number - 1])
            if number == self.cut_retr:
                self.cut_retr, self.hang_up = None, True
                return writer.ok() + body[: len(body) // 2]   # then the connection closes
            return writer.ok(b"%d octets" % len(self.messages[number - 1])) + body
        if name == b"DELE":
            deleted.add(int(args[0]))
            return writer.ok()
        if name == b"QUIT":
            if self.fail_quit:
                deleted.clear()
                return None
            return writer.ok(b"bye")
        return writer.err(b"unknown command")


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    """A hang in the fetcher fails fast instead of waiting out the production timeout."""
    monkeypatch.setattr(fetcher, "reply_limits", lambda config: pop3_client.ReplyLimits(5.0))


@pytest.fixture
def log_records():
    with caught(logging.DEBUG) as records:
        yield records


async def run_sync(fake: FakePop3, tmp_path, retention: str = "keep", store=None):
    config = make_config(fake.port, str(tmp_path / "s.db"), retention)
    own = store is None
    store = store or await open_store(config.gateway.store)
    try:
        return await sync_account(config, store, "dc", USER, PASSWORD), await stored(store, USER)
    finally:
        if own:
            await store.close()


async def test_no_uidl_deduplicates_by_digest(nursery, tmp_path, log_records):
    fake = FakePop3(MESSAGES)
    await fake.start(nursery)
    result, got = await run_sync(fake, tmp_path)
    assert result.new == 4   # the byte-identical third message is the known limitation
    assert all(uidl.startswith("sha256:") for uidl in got)
    assert sorted(body for _, body in got.values()) == sorted(set(MESSAGES))
    assert any(r.getMessage() == "gateway_fetch_no_uidl" for r in log_records)
    again, got_again = await run_sync(fake, tmp_path)
    assert again.new == 0 and got_again == got
    # Retention works in digest mode too.
    result, _ = await run_sync(fake, tmp_path, "delete-after-fetch")
    assert result.deleted_upstream == 4 and fake.messages == [MESSAGES[2]]


async def test_retr_cut_short_stores_nothing_partial(nursery, tmp_path, log_records):
    fake = FakePop3(MESSAGES, uidl=True, cut_retr=4)
    await fake.start(nursery)
    with pytest.raises(UpstreamError) as info:
        await run_sync(fake, tmp_path)
    assert info.value.failure is Failure.UPSTREAM and "truncated" in info.value.detail
    store = await open_store(str(tmp_path / "s.db"))
    got = await stored(store, USER)
    # The three complete messages before the cut are kept; the cut one is not, not even in part.
    assert {u: b for u, (_, b) in got.items()} == {f"id-{i}": MESSAGES[i - 1] for i in (1, 2, 3)}
    failed = [r for r in log_records if r.getMessage() == "gateway_sync_failed"]
    assert failed and failed[0].fields["reason"] == "upstream"
    result, got = await run_sync(fake, tmp_path, store=store)
    assert result.new == 2
    assert {u: b for u, (_, b) in got.items()} == {f"id-{i}": MESSAGES[i - 1] for i in range(1, 6)}
    await store.close()


@pytest.mark.parametrize("options, reason", [
    ({"uidl_reply": writer.ok() + b"1 id-1\r\nthis is not a uidl line\r\n.\r\n"}, Failure.PROTOCOL),
    ({"uidl": True, "retr_reply": b"HELLO there\r\n"}, Failure.PROTOCOL),
    ({"uidl": True, "retr_reply": b"+OK\r\n" + b"x" * 100}, Failure.UPSTREAM),   # then EOF
    ({"uidl": True, "retr_reply": b"+OK\r\nSubject: x\r\n\r\nbody\r\n.\r"}, Failure.UPSTREAM),
], ids=["bad-uidl-line", "bad-status-line", "unterminated-body", "almost-terminated"])
async def test_malformed_replies_store_nothing(nursery, tmp_path, options, reason):
    fake = FakePop3(MESSAGES[:2], **options)
    await fake.start(nursery)
    with pytest.raises(UpstreamError) as info:
        await run_sync(fake, tmp_path)
    assert info.value.failure is reason
    store = await open_store(str(tmp_path / "s.db"))
    assert await stored(store, USER) == {}
    await store.close()


async def test_auth_plain_when_user_not_offered(nursery, tmp_path):
    fake = FakePop3(MESSAGES[:2], uidl=True, capa=[b"SASL PLAIN", b"UIDL", b"PIPELINING"])
    await fake.start(nursery)
    result, _ = await run_sync(fake, tmp_path)
    assert result.new == 2
    assert b"AUTH" in fake.commands and b"USER" not in fake.commands


async def test_failed_quit_means_deletes_did_not_happen(nursery, tmp_path):
    fake = FakePop3(MESSAGES[:3], uidl=True, fail_quit=True)
    await fake.start(nursery)
    result, got = await run_sync(fake, tmp_path, "delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (3, 0)
    assert len(fake.messages) == 3 and len(got) == 3
    fake.fail_quit = False
    result, _ = await run_sync(fake, tmp_path, "delete-after-fetch")
    assert (result.new, result.deleted_upstream) == (0, 3)
    assert fake.messages == []
