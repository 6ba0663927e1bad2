"""The POP3 relay after login on trio: two pumps in one nursery driving the relay core.

Theory of operation: the protocol logic is the sans-IO Pop3RelayCore (pop3_core.py): commands
forwarded a run at a time, the queue of answers owed, the proxy's own answers in order, meters
and the idle timer. This driver only moves bytes for it. The client pump hands each chunk to the
core and writes the commands it returns upstream in one write; while a local answer waits for
earlier commands to be answered (`core.waiting`) it stops reading the client. The upstream pump
forwards each chunk to the client first and then lets the core parse it; when that answers the
last earlier command, it writes the waiting answer and the commands behind it, then wakes the
client pump. A watchdog task sleeps until the idle timer; the drain calls back (no task).
With `relay.engine: epoll` a plain-TCP session runs in the engine instead (engine_pop3.py).
"""

from __future__ import annotations

import trio

from ..net.conn import Conn
from ..pop3 import CommandParser, Limits
from ..session.context import Session
from ..session.failures import Close
from .engine_entry import run_in_engine
from .engine_pop3 import Pop3EngineSession
from .pop3_core import Pop3RelayCore
from .pop3_upstream import UpstreamPOP3, relayable


class Pop3Relay:
    def __init__(self, session: Session, client: Conn, client_leftover: bytes,
                 upstream: UpstreamPOP3):
        self.session = session
        self.client = client
        self.upstream = upstream.conn
        parser = CommandParser(Limits(max_command_line=session.listener.limits.pop3_max_command_line))
        if client_leftover:   # commands pipelined behind the login
            parser.receive_data(client_leftover)
        self.core = Pop3RelayCore(session, parser, relayable(upstream.capabilities),
                                  trio.current_time())
        self._answered = trio.Event()   # a waiting local answer went out: read the client again
        self._cancel = trio.CancelScope()

    async def run(self) -> None:
        drain = self.session.runtime.drain
        try:
            if await run_in_engine(self.session, self.client, self.upstream,
                                   lambda *io: Pop3EngineSession(self.core, *io)):
                return
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._upstream_to_client)
                nursery.start_soon(self._watch_idle)
                drain.subscribe(self._drained)   # the process-wide drain calls back: no task
                await self._client_to_upstream()
        finally:  # also when cut at shutdown_timeout
            drain.unsubscribe(self._drained)
            self.core.settle()

    def _drained(self) -> None:
        """SIGTERM: close after the current command."""
        self.core.drained()
        if self.core.end is not None:
            self._cancel.cancel()

    async def _watch_idle(self) -> None:
        """RFC 1939 3 autologout: the core's idle deadline, re-read after each wake-up, so
        activity pushes it back."""
        core = self.core
        while True:
            deadline = core.due()
            if deadline <= trio.current_time():
                break
            await trio.sleep_until(deadline)
        core.timer(trio.current_time())
        self._cancel.cancel()

    async def _sent(self, up: bytes | bytearray) -> bool:
        """The core's own answers to the client first (their turn has come), then the commands
        it returned upstream; False once the session ends."""
        core = self.core
        replies = core.take_replies()
        if replies:
            await self.client.send(replies)
        if up and not await self.upstream.send(up):
            core.finish(Close.UPSTREAM_CLOSED)
        return core.end is None

    # -- client -> upstream ------------------------------------------------------------------
    async def _client_to_upstream(self) -> None:
        core = self.core
        try:
            up = core.commands()   # what was pipelined behind the login
            while await self._sent(up):
                while core.waiting is not None:   # answers in order: stop reading till then
                    self._answered = trio.Event()
                    await self._answered.wait()
                data = await self.client.receive()
                up = core.client_data(data, trio.current_time())
                del data  # an idle session holds no chunk while it waits
        finally:
            self._cancel.cancel()

    # -- upstream -> client ------------------------------------------------------------------
    async def _upstream_to_client(self) -> None:
        core = self.core
        try:
            while True:
                data = await self.upstream.receive()
                if data and not await self.client.send(data):   # forward first
                    core.finish(Close.CLIENT_CLOSED)
                    return
                waited = core.waiting is not None
                if not await self._sent(core.upstream_data(data, trio.current_time())):
                    return
                if waited and core.waiting is None:
                    self._answered.set()
                del data
        finally:
            self._cancel.cancel()
