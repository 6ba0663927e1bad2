"""A POP3 relay session in the engine (engine.py): the relay core driven inline.

Theory of operation: the protocol logic is the sans-IO Pop3RelayCore (pop3_core.py), the same
one the task path (pop3_relay.py) drives. This driver only moves bytes: a client chunk goes to
the core and the commands it returns go upstream in one write; an upstream chunk goes to the
client first and is parsed after. The core's own answers go to the client before any command
that follows them goes upstream. While a local answer waits for earlier commands to be answered
(RFC 2449 6.6 keeps order) the session stops reading the client (`paused`). A chunk that is one
plain transaction command is written before it is parsed (`forward_first`) and judged at once,
before the engine can read the upstream's answer to it. The common chunks take a tight path
with nothing owed after it (Pop3RelayCore.plain_command and answer_chunk): one plain command
written upstream and judged, one whole answer or more of a body written to the client and
counted; everything else takes the core's general calls.
"""

from __future__ import annotations

from ..net.conn import Conn
from ..session.failures import Close
from .engine import Engine
from .engine_session import IN, EngineSession, Side
from .pop3_core import Pop3RelayCore

__all__ = ["Pop3EngineSession"]


class Pop3EngineSession(EngineSession):
    __slots__ = ("core",)

    def __init__(self, core: Pop3RelayCore, engine: Engine, client: Conn, client_fd: int,
                 upstream: Conn, upstream_fd: int):
        super().__init__(engine, core.session, client, client_fd, upstream, upstream_fd)
        self.core = core

    def start(self) -> None:
        self._sent(self.core.commands())   # what was pipelined behind the login

    def received(self, side: Side, data: bytes) -> bool:
        core, client, upstream = self.core, self.client, self.upstream
        if side is client:
            if data and core.plain_command(data, self.engine.now):   # the common chunk
                if not (upstream.write(data) if upstream.tls is None   # (send(), spelt out)
                        else self.send(upstream, data)):
                    core.finish(Close.UPSTREAM_CLOSED)
                core.judge()
                if core.end is not None:
                    self.finish()
                    return False
                # settled when both are read and nothing waits (its idle timer only moves later)
                return not upstream.out and upstream.mask == client.mask == IN and not self.paused
            self._sent(core.client_data(data, self.engine.now, forward_first=True))
        elif data and not (client.write(data) if client.tls is None   # forward first: parsing
                           else self.send(client, data)):              # never delays it
            core.finish(Close.CLIENT_CLOSED)
            self._sent(b"")
        elif core.answer_chunk(data, self.engine.now):   # the common chunk: nothing owed
            return not client.out and upstream.mask == client.mask == IN and not self.paused
        else:
            self._sent(core.upstream_data(data, self.engine.now))
        return False

    def _sent(self, up: bytes | bytearray) -> None:
        """Send what the core says (`forward`); stop reading the client while a local answer
        waits its turn; end as the core says."""
        core = self.core
        self.forward(core, up)
        self.paused = core.waiting is not None
        if core.end is not None:
            self.finish()

    # -- timers and drain -------------------------------------------------------------------
    def due(self) -> float:
        return self.core.due()

    def timer(self, now: float) -> None:
        self.core.timer(now)
        self._sent(b"")

    def drained(self) -> None:
        self.core.drained()
        self._sent(b"")
