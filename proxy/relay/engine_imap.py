"""An IMAP relay session in the engine (engine.py): the relay core driven inline.

Theory of operation: the protocol logic is the sans-IO ImapRelayCore (imap_core.py), the same
one the task path (imap_relay.py) drives, so the two paths behave alike and a session can move
from the engine to tasks at any chunk boundary. This driver only moves bytes: a chunk from the
client goes to the core and what it accepted goes upstream in one write; a chunk from the
upstream goes to the client first and is parsed after; then the core's own lines for the client
are written, and the session ends when the core says so. Timers and the drain are the core's
`due()` / `timer()` / `drained()`. A chunk that is one plain command line is written upstream
before it is parsed (`forward_first`), then judged at once: nothing can read the upstream's
answer in between, since this session's steps run one at a time under the engine's lock.

A literal payload still to come from the upstream, of `relay.splice_min_literal` bytes or more,
on plain sides, goes to the client through a pipe without entering Python (engine_splice.py).

A client's COMPRESS (RFC 4978) is forwarded like any command, then the session is handed back
to tasks before the upstream's verdict is read: the task path waits for it, and inflates.

A LOGOUT the core may answer itself (`logout_tag`, once it is all written upstream) is
answered so, and the session ends as engine_logout.py's LoggedOut, off the client's path.
"""

from __future__ import annotations

from ..net.conn import Conn
from ..session.failures import Close
from . import engine_reuse, engine_splice, imap_fused
from .engine import Engine
from .engine_logout import LOGOUT_WAIT, LoggedOut
from .engine_session import IN, EngineSession, Side
from .engine_splice import NEVER
from .imap_core import ImapRelayCore

__all__ = ["ImapEngineSession"]


class ImapEngineSession(EngineSession):
    __slots__ = ("core", "leftover", "splice_min", "splice_at", "pipe", "fuse", "fused_step",
                 "reuse")

    def __init__(self, core: ImapRelayCore, upstream_leftover: bytes, engine: Engine,
                 client: Conn, client_fd: int, upstream: Conn, upstream_fd: int):
        super().__init__(engine, core.session, client, client_fd, upstream, upstream_fd)
        self.core = core
        self.leftover = upstream_leftover   # what the login's parser read past its reply
        # literals spliced from this size (NEVER: relay.splice_min_literal null); the pipe,
        # while one is spliced (the engine's pool has it back after)
        self.splice_min = core.session.runtime.config.relay.splice_min_literal or NEVER
        self.splice_at = self.splice_min   # `start` is asked from this (0: the read after one)
        self.pipe: engine_splice.Pipe | None = None
        self.fuse = imap_fused.FusedStep(self)
        self.fused_step = self.fuse.step   # (`fused` while at rest)
        # upstream reuse on (engine_reuse.py): every client chunk is judged there first, so
        # the fused step is not used
        self.reuse: engine_reuse.Reusable | None = None

    def start(self) -> None:
        leftover, self.leftover = self.leftover, b""
        if leftover:
            self.received(self.upstream, leftover)
        if not self.done and self.core.held.held:   # commands pipelined behind the login
            self._sent(self.core.client_input())
        # at rest already: the first command (SELECT) and its answer may take the fused step
        # too. (The sides' masks are still the login's here; the engine's `_guarded` fits them
        # to IN right after this step, nothing waiting to be written, before any chunk is read.)
        if (self.fused is None and not self.done and not self.client.out
                and not self.upstream.out and not self.paused and self.reuse is None
                and imap_fused.at_rest(self)):
            self.fused = self.fused_step

    def received(self, side: Side, data: bytes) -> bool:
        """True when settled (engine.py): both sides read, nothing waits to be written, and the
        session's timer only moved later (activity; an IDLE, whose timeout is shorter, is never
        settled here)."""
        core, client, upstream = self.core, self.client, self.upstream
        if self.fused is not None:
            self.unfuse()
        if side is client:
            if self.reuse is not None and engine_reuse.client_chunk(self, data):
                return False   # a LOGOUT answered here: the upstream is parked
            up = core.client_data(data, self.engine.now, forward_first=True)
            if not up or core.replies:
                self._sent(up)
                return False
            # the common chunk: what `forward` does when the core has no reply before it
            # (`send()` spelt out for a plain side: all the Python of a wake-up is on the round
            # trip, bench/README.md, ninth session, "3. The round trip runs on one CPU")
            if not (upstream.write(up) if upstream.tls is None and not upstream.conn.closed
                    else self.send(upstream, up)):
                core.finish(Close.UPSTREAM_CLOSED)
            core.judge()
        else:
            if data and not (client.write(data) if client.tls is None and not client.conn.closed
                             else self.send(client, data)):   # forward first: parsing never
                core.finish(Close.CLIENT_CLOSED)                  # delays it
            else:
                core.upstream_data(data, self.engine.now)   # (never compressed here: handed back)
        if (core.replies or core.end is not None or core.compress is not None
                or core.logout_tag is not None):
            self._sent(b"")   # (otherwise it has nothing to do: the common answer)
            return False
        if core.literal_owed >= self.splice_at and side is upstream and engine_splice.start(self):
            return False
        if (upstream.out or client.out or core.inflight.idle_tag is not None
                or upstream.mask != IN or client.mask != IN or self.paused):
            return False
        if self.reuse is None and imap_fused.at_rest(self):
            self.fused = self.fused_step
        return True

    def unfuse(self) -> None:
        self.fused = None
        self.fuse.flush()

    def carry_on(self) -> None:
        """After the core was fed outside `received` (engine_splice.py): as `_sent`."""
        self._sent(b"")

    # -- a literal spliced (engine_splice.py) --------------------------------------------------
    def splice_ready(self, side: Side, events: int) -> None:
        engine_splice.step(self, side, events)

    def masks(self) -> tuple[int, ...] | None:
        return engine_splice.masks(self) if self.upstream.spliced else None

    def released(self) -> None:
        if self.pipe is not None:
            engine_splice.end(self)

    def _sent(self, up: bytes | bytearray) -> None:
        """Send what the core says (`forward`); end or hand back as it says."""
        core = self.core
        self.forward(core, up)
        if core.logout_tag is not None and self._logged_out():
            return
        if core.end is not None:
            self.finish()
        elif core.compress is not None:
            self.hand_back()

    def _logged_out(self) -> bool:
        """The core answers the LOGOUT just forwarded, if it may (once all of it is written,
        and with someone waiting for the session's end: not in `start` before the task is
        parked, Engine.relay); the session goes on as LoggedOut (engine_logout.py)."""
        core = self.core
        waited = self.task is not None or self.ended is not None
        if not core.answer_logout(written=waited and not self.upstream.out):
            return False
        self.send(self.client, core.take_replies())
        self.released()   # (succeeded, never released: a splice's pipe is given back here)
        self.engine.succeed(self, LoggedOut(self, self.engine.now + LOGOUT_WAIT))
        return True

    # -- timers and drain -------------------------------------------------------------------
    def due(self) -> float:
        return self.core.due()

    def timer(self, now: float) -> None:
        self.core.timer(now)
        self._sent(b"")

    def drained(self) -> None:
        self.core.drained()
        self._sent(b"")
