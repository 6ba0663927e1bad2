"""What a relay engine login (engine_login.py) keeps while it is under way, and what it hands
trio when the upstream refused or failed it."""

from __future__ import annotations

import socket
import time

from ..config import Upstream
from ..imap import events
from ..session.failures import Failure
from ..session.imap_prelogin import LoginRequest
from ..session.upstream import UpstreamError
from .imap_login_machine import ImapLogin
from .imap_upstream import UpstreamIMAP

__all__ = ["DecidedLogin", "EngineLoginStep"]


class DecidedLogin:
    """A login the engine asked the upstream, refused or failed: trio goes on from its outcome
    as if its own attempt had got it (log_in's metrics, throttle and delay, the auth log line,
    the client's NO, the upstream_errors count of an UpstreamError)."""

    __slots__ = ("cmd", "request", "started", "outcome")

    def __init__(self, cmd: events.Command, request: LoginRequest, started: float,
                 outcome: tuple[Failure, bytes] | UpstreamError):
        self.cmd, self.request, self.started, self.outcome = cmd, request, started, outcome

    async def attempt(self, session: object, creds: object, name: str, upstream: Upstream
                      ) -> tuple[UpstreamIMAP | Failure, bytes, bytes | None]:
        if isinstance(self.outcome, UpstreamError):
            raise self.outcome
        failure, text = self.outcome
        return failure, text, None


class EngineLoginStep:
    """A login under way in the engine; `machine` reads and decides the upstream's answers."""

    __slots__ = ("cmd", "request", "name", "upstream", "sock", "up", "machine", "sent", "started")

    def __init__(self, cmd: events.Command, request: LoginRequest, name: str, upstream: Upstream,
                 sock: socket.socket, up: UpstreamIMAP, machine: ImapLogin):
        self.cmd, self.request, self.name, self.up, self.machine = cmd, request, name, up, machine
        self.upstream, self.sock = upstream, sock
        self.sent = b""   # the early login, written once connected
        self.started = time.monotonic()
