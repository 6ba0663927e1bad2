"""Fixtures: the gateway service running in-process on a real loopback socket, in front of the
session's real Dovecot (POP3 upstream). Clients (imaplib, imapclient, mbsync) run in threads.

    gateway   function, parametrized over the store: a `GatewayHandle` with `.port`,
              `.user`/`.password` (a fresh Dovecot user), `.deliver(bytes)`, `.imaplib()`,
              `.imapclient()`, `.restart()`. Every test using it runs once on SQLite and once on
              PostgreSQL (a fresh schema of the session's private cluster).
    gateway_store  function, parametrized: `gateway.store` for a test's own handles (an SQLite
              path or a `postgresql://` URL).
"""

from __future__ import annotations

import email.utils
import functools
import imaplib
import json

import imapclient
import pytest
import trio

from proxy.config import loads
from proxy.gateway.service import open_gateway
from proxy.metrics import Metrics
from proxy.net.conn import Conn
from proxy.session.context import Runtime, Session
from support.polling import wait_for
from support.ports import free_ports
from support.proxyproc import relay_config


def message(n: int, subject: str | None = None, body: str | None = None, sender="alice@example.org"):
    return (f"From: Alice <{sender}>\r\nTo: bob@example.com\r\nSubject: {subject or f'message {n}'}\r\n"
            f"Date: {email.utils.formatdate(1700000000 + n * 60)}\r\nMessage-ID: <m{n}@example.org>\r\n"
            f"\r\n{body or f'body of message {n}'}\r\n").encode()


def select_stored(client: imaplib.IMAP4, count: int, mailbox: str = "INBOX") -> None:
    """SELECT (read-only) `mailbox` until it has `count` messages: a login waits for its
    account's first sync only gateway.login_sync_wait (proxy/gateway/service.py), which a big ingest
    can outlast under load (bounded polling)."""
    wait_for(lambda: client.select(mailbox, readonly=True)[1][0] == b"%d" % count,
             f"{count} messages stored in {mailbox}", interval=0.1)


async def inbox_metas(gateway) -> list:
    """The gateway user's INBOX messages as the store has them (MessageMeta, in UID order)."""
    store = gateway.service.store
    (upstream,) = gateway.config.upstreams
    account = await store.get_account(upstream, gateway.user.lower())
    assert account is not None
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return await store.messages(inbox.id)


async def differences_from_dovecot(gateway, dovecot, other, compare) -> list[str]:
    """A differential test's run: `compare(ours, theirs)` in a thread, `ours` logged in to the
    gateway and `theirs` to Dovecot as `other` (not the gateway's user, whose POP3 INBOX must
    stay as the test left it); both logged out after it, the gateway stopped in any case.
    Returns what `compare` found to differ."""
    def run() -> list[str]:
        ours = gateway.imaplib()
        theirs = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
        theirs.login(*other)
        bad = compare(ours, theirs)
        ours.logout()
        theirs.logout()
        return bad

    try:
        return await trio.to_thread.run_sync(run)
    finally:
        await gateway.stop()

class GatewayHandle:
    def __init__(self, dovecot, tmp_path, user, password, **gateway):
        cfg = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg["gateway"] = {"store": str(tmp_path / "gateway.db"), "poll_interval": "1s", **gateway}
        self.store_url = cfg["gateway"]["store"]
        self.config = loads(json.dumps(cfg))
        self.listener = self.config.listeners[0]
        self.metrics = Metrics()
        self.runtime = Runtime.build(self.config, self.metrics)
        self.dovecot, self.user, self.password = dovecot, user, password
        # a port of support.ports (outside the ephemeral range): restart() binds it again, and a
        # port 0 pick could meanwhile be an outgoing connection's local port
        [self.port] = free_ports(1)
        self.service = None
        self._scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None

    def deliver(self, data: bytes, user: str | None = None) -> None:
        self.dovecot.deliver(user or self.user, data)

    async def _handler(self, stream) -> None:
        conn = Conn(stream)
        peer = stream.socket.getpeername()
        session = Session(self.runtime, self.listener, peer[0], peer[1], "127.0.0.1", self.port)
        try:
            await self.service.handle(session, conn)
        finally:
            await conn.aclose()

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            async with open_gateway(self.config, self.metrics) as service:
                self.service = service
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(functools.partial(
                        trio.serve_tcp, self._handler, self.port, host="127.0.0.1"))
                    self.port = listeners[0].socket.getsockname()[1]
                    task_status.started()
        self._stopped.set()

    async def start(self, nursery: trio.Nursery) -> None:
        self._stopped = trio.Event()
        await nursery.start(self._serve)
        self._nursery = nursery

    async def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
            self._scope = None

    async def restart(self) -> None:
        """Close the service (and the store) and open it again on the same port and file."""
        await self.stop()
        await self.start(self._nursery)

    def imaplib(self, login: bool = True) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=20)
        if login:
            client.login(self.user, self.password)
        return client

    def imapclient(self, login: bool = True) -> imapclient.IMAPClient:
        client = imapclient.IMAPClient("127.0.0.1", self.port, ssl=False, timeout=20)
        if login:
            client.login(self.user, self.password)
        return client


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway_store(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_dsn")
    return str(tmp_path / "gateway.db")


@pytest.fixture
async def gateway(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    handle = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await handle.start(nursery)
    yield handle
    await handle.stop()
