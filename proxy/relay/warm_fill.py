"""The filler of the warm pools (session/warm_pool.py): one trio task per runtime.

Theory of operation: the task keeps each pool at its size. It opens one connection at a time
per pool (TCP, then the greeting and capabilities read by the protocol's `greet`, bounded by
the listeners' `upstream_connect`), detaches its socket from trio and puts it in the pool. It
sleeps until a connection is taken (the pool's `wake`, callable from any thread), the oldest
one reaches `max_age`, or a failed pool's retry is due (FILL_RETRY_DELAY: an upstream that is
down is not hammered; its logins connect themselves meanwhile and fail as usual). The task
ends when its pools are closed: by a reload (App.apply closes the old runtime's), by the drain
(subscribed to it), or when the process's services stop.
"""

from __future__ import annotations

import logging
import math
import ssl
import time

import trio

from .. import logs
from ..config import Upstream
from ..session.context import Runtime
from ..session.failures import Failure
from ..session.upstream import UpstreamError, deadline, detach, open_upstream
from ..session.warm_pool import WarmConnection, WarmPool
from . import imap_upstream, pop3_upstream

__all__ = ["FILL_RETRY_DELAY", "keep_warm"]

FILL_RETRY_DELAY = 1.0   # seconds before a pool whose upstream failed is filled again


async def keep_warm(runtime: Runtime) -> None:
    """Fill `runtime.warm_pools` until they are closed. Returns at once when there are none."""
    pools = runtime.warm_pools
    if not pools:
        return
    wake = _Wake()
    for pool in pools:
        pool.wake = wake
    runtime.drain.subscribe(pools.drained)
    retry_at = {pool: -math.inf for pool in pools}
    try:
        while not pools.closed:
            due = math.inf
            for pool in pools:
                if retry_at[pool] <= trio.current_time() and not await _fill(runtime, pool):
                    retry_at[pool] = trio.current_time() + FILL_RETRY_DELAY
                if pool.missing():
                    due = min(due, retry_at[pool])
                due = min(due, trio.current_time() + pool.expire_in())
            await wake.wait_until(due)
    finally:
        runtime.drain.unsubscribe(pools.drained)
        pools.close("stop")


async def _fill(runtime: Runtime, pool: WarmPool) -> bool:
    """Open what `pool` misses, one after the other; False when one could not be opened."""
    upstream = runtime.config.upstreams[pool.name]
    while pool.missing() > 0:
        try:
            with deadline(pool.connect_timeout, "warm connection"):
                conn = await _open(runtime, pool, upstream)
        except UpstreamError as exc:
            pool.count("failed")
            logs.event("upstream_warm_failed", logging.INFO, upstream=pool.name,
                       protocol=pool.protocol, reason=exc.failure.label,
                       detail=logs.sanitize(exc.detail))
            return False
        except Exception:   # a bug here must not end the process: logged, retried later
            pool.count("failed")
            logs.event("upstream_warm_failed", logging.ERROR, exc_info=True, upstream=pool.name,
                       protocol=pool.protocol, reason=Failure.INTERNAL.label)
            return False
        pool.put(conn)
    return True


async def _open(runtime: Runtime, pool: WarmPool, upstream: Upstream) -> WarmConnection:
    """One connection to `pool`'s upstream, greeted; raises UpstreamError."""
    conn = await open_upstream(upstream, pool.protocol, _plaintext, runtime.connect)
    try:
        up: imap_upstream.UpstreamIMAP | pop3_upstream.UpstreamPOP3
        if pool.protocol == "imap":
            up = imap_upstream.UpstreamIMAP.over(conn)
            await imap_upstream.greet(up)
            tags_used, xclient = up.tag_counter, False
        else:
            up = pop3_upstream.UpstreamPOP3.over(conn)
            await pop3_upstream.greet(up)
            tags_used, xclient = 0, up.xclient
        if up.channel.parser.buffered:
            raise UpstreamError(Failure.PROTOCOL, "more than its greeting before the proxy spoke")
    except BaseException:
        await conn.aclose()
        raise
    return WarmConnection(detach(conn), up.capabilities, xclient=xclient, tags_used=tags_used,
                          born=time.monotonic())


def _plaintext() -> ssl.SSLContext:
    raise AssertionError("warm pools are plaintext (config/upstreams.py refuses TLS)")


class _Wake:
    """"A connection was taken, or the pools closed": callable from any thread."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()

    def __call__(self) -> None:
        try:
            self._token.run_sync_soon(self._set, idempotent=True)
        except trio.RunFinishedError:
            pass

    def _set(self) -> None:
        self._event.set()

    async def wait_until(self, when: float) -> None:
        with trio.move_on_at(when):
            await self._event.wait()
        self._event = trio.Event()
