"""An in-process gateway for the gateway benchmarks (first_select, sort, propagation, gateway,
gateway_compress): the gateway service behind `trio.serve_tcp` on a free loopback port, the way
`serve` hands it connections (without the front's TLS, limits or metrics endpoint), so a benchmark
can read the gateway's own CPU and GC figures from its process."""

from __future__ import annotations

import functools
import imaplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from proxy.gateway.service import open_gateway
from proxy.metrics import Metrics
from proxy.net.conn import Conn
from proxy.session.context import Runtime, Session


@asynccontextmanager
async def gateway_listening(config: Any, *, backlog: int | None = None) -> AsyncIterator[tuple[int, Any]]:
    """Serve `config`'s first listener as a gateway until the block ends; yields the port and
    the gateway service (its `.store` for benchmarks that look at what was ingested)."""
    metrics = Metrics()
    runtime = Runtime.build(config, metrics)
    async with open_gateway(config, metrics) as service, trio.open_nursery() as nursery:
        async def handler(stream: trio.SocketStream) -> None:
            conn = Conn(stream)
            session = Session(runtime, config.listeners[0], "127.0.0.1", 0, "127.0.0.1", 0)
            try:
                await service.handle(session, conn)
            finally:
                await conn.aclose()

        options = {} if backlog is None else {"backlog": backlog}
        listeners = await nursery.start(functools.partial(
            trio.serve_tcp, handler, 0, host="127.0.0.1", **options))
        try:
            yield listeners[0].socket.getsockname()[1], service
        finally:
            nursery.cancel_scope.cancel()


async def log_in_until_ingested(service: Any, port: int, user: str, password: str,
                                messages: int) -> None:
    """Log in over IMAP until the account's INBOX in the store holds `messages` messages (the
    first login downloads the POP3 mailbox; later ones find it there)."""
    while True:
        await trio.to_thread.run_sync(
            lambda: imaplib.IMAP4("127.0.0.1", port).login(user, password))
        inbox = await service.store.get_mailbox(
            (await service.store.ensure_account("main", user)).id, "INBOX")
        if inbox.exists >= messages:
            return
