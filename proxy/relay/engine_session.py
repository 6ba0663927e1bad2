"""A session in the relay engine (engine.py): its two sides and what the protocol gives.

Theory of operation: a protocol's engine session (engine_imap.py, engine_pop3.py) is called by
the engine's thread with each chunk read from either side (`received`), when its nearest timer
comes due (`timer`), and at a drain (`drained`), always under the engine's lock. It answers by
`send()`ing to a side, which writes at once (encrypting first on a TLS side) and leaves what
the kernel did not take in the side's `out` (the engine then waits for EPOLLOUT and stops
reading the other side), and ends with `finish()` (its close_reason set) or `hand_back()` to
the task path. The protocol never sees TLS: it gets and sends plaintext on either kind of side.
"""

from __future__ import annotations

import math
import os
import select
import ssl
from typing import TYPE_CHECKING, Callable, Protocol

import trio

from ..net.conn import Conn, TLSStream
from ..net.tls_engine import TLSEngine
from ..session.context import Session
from ..session.failures import Close

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["IN", "OUT", "RECEIVE_SIZE", "EngineSession", "Side"]

IN, OUT = select.EPOLLIN, select.EPOLLOUT
RECEIVE_SIZE = 256 * 1024   # one read per ready socket per wake-up


class Side:
    """One connection of an engine session: its descriptor, its Conn (byte counts, EOF), its
    TLSEngine when it is a TLS connection, and the bytes (ciphertext on TLS) the kernel has not
    taken yet. Byte counts are of plaintext, as on the task path."""

    __slots__ = ("fd", "conn", "tls", "out", "mask", "session", "read_size", "spliced")

    def __init__(self, conn: Conn, fd: int, session: EngineSession):
        self.fd = fd
        self.conn = conn
        stream = conn.stream
        self.tls: TLSEngine | None = stream.engine if isinstance(stream, TLSStream) else None
        self.out: bytes | bytearray | memoryview = b""
        self.mask = IN
        self.session = session
        self.read_size = RECEIVE_SIZE   # a plain side's next read (engine_splice.py lowers it)
        self.spliced = False   # its readiness goes to the session's `splice_ready` (both sides)

    def write(self, data: bytes | bytearray) -> bool:
        """Write `data` (ciphertext on TLS) now, or keep the rest for when the socket is
        writable; False (and the Conn marked closed) when the peer is gone."""
        if self.out:   # (rare: the proxy's own line while a chunk waits)
            self.out = bytearray(self.out) + data
            return True
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.conn.closed = True
            return False
        if self.tls is None:
            self.conn.bytes_out += sent
        if sent < len(data):
            self.out = memoryview(data)[sent:]
        return True


class RelayCore(Protocol):
    """What `EngineSession.forward` needs of a protocol's sans-IO relay core (relay/*_core.py)."""

    end: Close | None

    def take_replies(self) -> bytes: ...
    def judge(self) -> None: ...
    def finish(self, reason: Close) -> None: ...


class EngineSession:
    """A relay session in the engine; the protocol's subclass gives `start`, `received`,
    `due`, `timer` and `drained`. `finish()` ends it, `hand_back()` returns it to tasks."""

    __slots__ = ("engine", "session", "client", "upstream", "sides", "done", "handed_back",
                 "paused", "timer_at", "task", "on_drain", "successor", "ended", "fused")

    def __init__(self, engine: Engine, session: Session, client: Conn, client_fd: int,
                 upstream: Conn | None, upstream_fd: int):
        """Without `upstream` the session is its client alone (`upstream` is `client` then,
        `sides` has one): the pre-login dialogue (engine_prelogin.py)."""
        self.engine = engine
        self.session = session
        self.client = Side(client, client_fd, self)
        self.upstream = self.client if upstream is None else Side(upstream, upstream_fd, self)
        self.sides = (self.client,) if upstream is None else (self.client, self.upstream)
        self.done = False
        self.handed_back = False
        self.paused = False        # the protocol stops reading the client (POP3: answers in order)
        self.timer_at = math.inf   # when this session's live heap entry fires
        self.task: trio.lowlevel.Task | None = None
        self.on_drain: Callable[[], None] | None = None   # subscribed to the drain
        self.successor: EngineSession | None = None   # carries the session on (Engine.succeed)
        # without a task (accepted by the engine, engine_accept.py): called at its release
        self.ended: Callable[[EngineSession], None] | None = None
        # the protocol's fused step for a plain chunk while the session is at rest, else None
        # (engine_loop.py `_loop`): `fused(side, chunk)` True when it took the chunk (and
        # left the session settled), False when it changed nothing (the full path takes it).
        # Set by the protocol's `received` only; any other step clears it (`unfuse`).
        self.fused: Callable[[Side, bytes], bool] | None = None

    # -- what the protocol gives --------------------------------------------------------------
    def start(self) -> None:
        """Process what the login left unconsumed on either side."""

    def received(self, side: Side, data: bytes) -> bool | None:
        """A chunk read from `side` (b"" at end of stream). True: the session is settled,
        the engine need not look at it again (nothing waits to be written, both sides are read,
        its timer moved later if at all: engine.py `_interest` and `_schedule` would change
        nothing)."""
        raise NotImplementedError

    def due(self) -> float:
        """When the nearest timer could fire (trio clock)."""
        return math.inf

    def timer(self, now: float) -> None:
        """The entry for `due()` came up: act on whatever timer has expired."""

    def drained(self) -> None:
        """The process drains (SIGTERM)."""

    def writable(self, side: Side) -> None:
        """`side` is writable and nothing of ours waits to go there (a connect completed)."""

    def splice_ready(self, side: Side, events: int) -> None:
        """`side` is ready while it is `spliced`: the protocol moves the bytes itself."""

    def released(self) -> None:
        """The engine let go of the session (its end or a hand-back)."""

    def unfuse(self) -> None:
        """Leave the fused step (`fused`): what it kept aside is accounted for first."""
        self.fused = None

    def masks(self) -> tuple[int, ...] | None:
        """The epoll masks of `sides` when the protocol sets them itself (a login); None: the
        engine's own rule for a relay (engine.py `_interest`)."""
        return None

    # -- what the engine gives ------------------------------------------------------------
    def forward(self, core: RelayCore, up: bytes | bytearray) -> None:
        """The core's own replies to the client, then what it accepted upstream (judged right
        after its write: nothing runs in between, so the upstream's answer is not read yet),
        then the replies that judging made."""
        replies = core.take_replies()
        if replies:
            self.send(self.client, replies)
        if up:
            if not self.send(self.upstream, up):
                core.finish(Close.UPSTREAM_CLOSED)
            core.judge()
            replies = core.take_replies()
            if replies:
                self.send(self.client, replies)

    def send(self, side: Side, data: bytes | bytearray) -> bool:
        """Write `data` to `side` now, or keep the rest for when it is writable; False (and the
        Conn marked closed) when the peer is gone."""
        conn = side.conn
        if conn.closed:
            return False
        tls = side.tls
        if tls is None:
            return side.write(data)
        try:
            tls.write(data)
        except ssl.SSLError:   # (the connection broke or was closed)
            conn.closed = True
            return False
        conn.bytes_out += len(data)
        return side.write(tls.data_to_send())

    def finish(self) -> None:
        """The session ends (its close_reason set by the caller); its task takes over."""
        self.engine.release(self)

    def _end(self, reason: Close) -> None:
        """The session ends for `reason`."""
        self.session.close_reason = reason
        self.finish()

    def hand_back(self) -> None:
        """The task path carries on from the session's state as it is."""
        self.handed_back = True
        self.engine.release(self)
