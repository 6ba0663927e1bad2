"""The relay in-process over trio memory streams, with trio's MockClock (pytest-trio's
`autojump_clock`): the login and idle timeouts fire without any real waiting, and the session's
replies, close reason and limit metric are exact.

The client side is a memory stream driven by the test; the upstream is a tiny scripted IMAP or
POP3 server on another memory stream, reached through `Runtime.connect` (a unit test of the
session layer and the relay, not of Dovecot: tests/integration covers that).
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from proxy.config import loads
from proxy.metrics import Metrics
from proxy.net.conn import Conn
from proxy.relay import imap_session, pop3_session
from proxy.session.context import Runtime, Session
from proxy.session.failures import Close

LOGIN_TIMEOUT = 60.0
IDLE_TIMEOUT = 1800.0


def config(protocol: str):
    port = {"imap": 143, "pop3": 110}[protocol]
    return loads(json.dumps({
        "listeners": [{"name": "l", "protocol": protocol, "address": "127.0.0.1:0",
                       "allow_plaintext_auth": True,
                       "timeouts": {"login": f"{LOGIN_TIMEOUT:g}s", "idle": f"{IDLE_TIMEOUT:g}s"}}],
        "upstreams": {"up": {"host": "192.0.2.1", protocol: {"port": port, "tls": "none"}}},
        "routes": [{"match": "*", "upstream": "up"}],
    }))


class ScriptedUpstream:
    """Answers each complete line the proxy sends with the reply `script` maps its command word
    to (the tag substituted for {tag}); counts connections."""

    def __init__(self, greeting: bytes, script: dict[bytes, bytes]):
        self.greeting, self.script = greeting, script
        self.connections = 0
        self.nursery: trio.Nursery | None = None

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        assert (host, self.nursery is not None) == ("192.0.2.1", True)
        ours, theirs = trio.testing.memory_stream_pair()
        self.connections += 1
        self.nursery.start_soon(self._serve, theirs)
        return ours

    async def _serve(self, stream: trio.abc.Stream) -> None:
        await stream.send_all(self.greeting)
        buffer = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                words = line.split(b" ")
                tag, word = (words[0], words[1].upper()) if len(words) > 1 else (b"", words[0])
                reply = self.script.get(word) or self.script.get(words[0].upper(), b"")
                await stream.send_all(reply.replace(b"{tag}", tag))


IMAP_UPSTREAM = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] fake\r\n", {
    b"AUTHENTICATE": b"{tag} OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n",
    b"NOOP": b"{tag} OK done\r\n",
})
POP3_UPSTREAM = (b"+OK fake\r\n", {
    b"CAPA": b"+OK\r\nUSER\r\nUIDL\r\n.\r\n",
    b"USER": b"+OK\r\n",
    b"PASS": b"+OK logged in\r\n",
    b"NOOP": b"+OK\r\n",
})


class Harness:
    def __init__(self, protocol: str, upstream: ScriptedUpstream):
        self.metrics = Metrics()
        self.runtime = Runtime.build(config(protocol), self.metrics, connect=upstream.connect)
        self.session = Session(self.runtime, self.runtime.config.listeners[0], "127.0.0.1",
                               40000, "127.0.0.1", 143)
        self.client, server = trio.testing.memory_stream_pair()
        self.conn = Conn(server)
        self.handler = {"imap": imap_session.handle, "pop3": pop3_session.handle}[protocol]
        self.upstream = upstream
        self.done = trio.Event()
        self.received = b""

    async def run(self) -> None:
        try:
            await self.handler(self.session, self.conn)
        finally:
            await self.conn.aclose()
            self.done.set()

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            data = await self.client.receive_some(65536)
            assert data, f"closed before {marker!r}; got {self.received!r}"
            self.received += data
        head, _, self.received = self.received.partition(marker)
        return head + marker

    async def read_to_eof(self) -> bytes:
        while data := await self.client.receive_some(65536):
            self.received += data
        rest, self.received = self.received, b""
        return rest

    def limit_hits(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value("mailproxy_limit_hits_total",
                                                      {"limit": name})


def harness(nursery: trio.Nursery, protocol: str,
            script: tuple[bytes, dict[bytes, bytes]] = IMAP_UPSTREAM) -> Harness:
    """A session of `protocol` (not started yet) whose upstream is `script`, served in `nursery`."""
    upstream = ScriptedUpstream(*script)
    upstream.nursery = nursery
    return Harness(protocol, upstream)


def running(nursery: trio.Nursery, protocol: str,
            script: tuple[bytes, dict[bytes, bytes]] = IMAP_UPSTREAM) -> Harness:
    """`harness` with the session running in `nursery`."""
    h = harness(nursery, protocol, script)
    nursery.start_soon(h.run)
    return h


async def logged_in_imap(nursery: trio.Nursery) -> Harness:
    """An IMAP session past its greeting and LOGIN."""
    h = running(nursery, "imap")
    await h.read_until(b"\r\n")
    await h.client.send_all(b"a LOGIN alice secret\r\n")
    await h.read_until(b"Logged in.\r\n")
    return h


@pytest.mark.parametrize("protocol, last_words", [
    ("imap", b"* BYE Login timeout.\r\n"), ("pop3", b"-ERR Login timeout.\r\n")])
async def test_login_timeout_without_waiting(nursery, autojump_clock, protocol, last_words):
    h = running(nursery, protocol)
    await h.read_until(b"\r\n")  # the greeting, then silence
    start = trio.current_time()
    assert await h.read_to_eof() == last_words
    await h.done.wait()
    assert trio.current_time() - start == pytest.approx(LOGIN_TIMEOUT)
    assert h.session.close_reason is Close.LOGIN_TIMEOUT
    assert h.limit_hits("login_timeout") == 1
    assert h.upstream.connections == 0


async def test_imap_idle_timeout_after_login(nursery, autojump_clock):
    h = running(nursery, "imap")
    await h.read_until(b"\r\n")
    await h.client.send_all(b"a LOGIN alice secret\r\n")
    assert await h.read_until(b"\r\n") == (
        b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in.\r\n")
    await h.client.send_all(b"b NOOP\r\n")
    assert await h.read_until(b"\r\n") == b"b OK done\r\n"  # relayed from the fake upstream
    start = trio.current_time()
    assert await h.read_to_eof() == b"* BYE Autologout; idle for too long.\r\n"
    await h.done.wait()
    assert trio.current_time() - start == pytest.approx(IDLE_TIMEOUT)
    assert h.session.close_reason is Close.IDLE_TIMEOUT
    assert h.limit_hits("idle_timeout") == 1
    assert h.limit_hits("login_timeout") == 0
    assert h.upstream.connections == 1


async def test_pop3_idle_timeout_closes_silently(nursery, autojump_clock):
    h = running(nursery, "pop3", POP3_UPSTREAM)
    assert await h.read_until(b"\r\n") == b"+OK mailproxy ready.\r\n"
    await h.client.send_all(b"USER alice\r\nPASS secret\r\n")
    assert await h.read_until(b"Logged in.\r\n") == b"+OK\r\n+OK Logged in.\r\n"
    await h.client.send_all(b"NOOP\r\n")
    assert await h.read_until(b"\r\n") == b"+OK\r\n"
    start = trio.current_time()
    # RFC 1939 3: the autologout timer closes without a response.
    assert await h.read_to_eof() == b""
    await h.done.wait()
    assert trio.current_time() - start == pytest.approx(IDLE_TIMEOUT)
    assert h.session.close_reason is Close.IDLE_TIMEOUT
    assert h.limit_hits("idle_timeout") == 1


async def test_activity_pushes_the_idle_timeout_back(nursery, autojump_clock):
    h = await logged_in_imap(nursery)
    start = trio.current_time()
    for n in range(3):  # a command just before each timeout keeps the session alive
        await trio.sleep(IDLE_TIMEOUT - 1)
        await h.client.send_all(b"n%d NOOP\r\n" % n)
        assert await h.read_until(b"\r\n") == b"n%d OK done\r\n" % n
    assert not h.done.is_set()
    assert await h.read_to_eof() == b"* BYE Autologout; idle for too long.\r\n"
    assert trio.current_time() - start == pytest.approx(3 * (IDLE_TIMEOUT - 1) + IDLE_TIMEOUT)


@pytest.mark.parametrize("protocol, last_words", [
    ("imap", b"* BYE Server shutting down.\r\n"),
    ("pop3", b"-ERR [SYS/TEMP] Server shutting down.\r\n")])
async def test_drain_before_login_ends_at_once(nursery, autojump_clock, protocol, last_words):
    h = running(nursery, protocol)
    await h.read_until(b"\r\n")
    start = trio.current_time()
    h.runtime.drain.set()
    assert await h.read_to_eof() == last_words
    await h.done.wait()
    assert trio.current_time() == start  # no timer involved
    assert h.session.close_reason is Close.SHUTDOWN
    assert h.limit_hits("login_timeout") == 0


async def test_imap_drain_after_login_says_bye_between_commands(nursery, autojump_clock):
    h = await logged_in_imap(nursery)
    h.runtime.drain.set()
    assert await h.read_to_eof() == b"* BYE Server shutting down.\r\n"
    await h.done.wait()
    assert h.session.close_reason is Close.SHUTDOWN


def _tasks_under(task: trio.lowlevel.Task) -> int:
    """`task` and every task it started, at any depth."""
    return 1 + sum(_tasks_under(child) for nursery in task.child_nurseries
                   for child in nursery.child_tasks)


@pytest.mark.parametrize("protocol, upstream, login, noop", [
    ("imap", IMAP_UPSTREAM, b"a LOGIN alice secret\r\n", b"b NOOP\r\n"),
    ("pop3", POP3_UPSTREAM, b"USER alice\r\nPASS secret\r\n", b"NOOP\r\n")])
async def test_a_session_runs_on_few_tasks(nursery, autojump_clock, protocol, upstream, login,
                                           noop):
    """Before login a session is one task (the drain is a process-wide callback, not a watcher
    per session); after login the relay adds two: the upstream pump and one watchdog for
    every timer and the drain (the client pump runs in the session's own task)."""
    h = harness(nursery, protocol, upstream)
    session_task: list[trio.lowlevel.Task] = []

    async def run() -> None:
        session_task.append(trio.lowlevel.current_task())
        await h.run()

    nursery.start_soon(run)
    await h.read_until(b"\r\n")
    assert _tasks_under(session_task[0]) == 1
    await h.client.send_all(login)
    await h.read_until(b"Logged in.\r\n")
    await h.client.send_all(noop)   # answered through the relay: its tasks are running
    await h.read_until(b"\r\n")
    assert _tasks_under(session_task[0]) == 3
    h.runtime.drain.set()
    await h.done.wait()
    assert h.session.close_reason is Close.SHUTDOWN
