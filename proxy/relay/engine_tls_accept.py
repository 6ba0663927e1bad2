"""An implicit-TLS client's handshake in the relay engine, before its IMAP session.

Theory of operation (issue 16): on an implicit-TLS (`tls: implicit`) IMAP relay listener the
engine accepts itself (engine_accept.py), the accepted connection first runs as a TLSAccept:
the server side of the handshake on a sans-IO TLSEngine (net/tls_engine.py: an SSLObject between
two memory BIOs) with the listener's contexts (SNI, tickets, reload: the set current at accept,
as net/tls.server_handshake takes it). The engine's loop reads the socket as for any plain side
(this session's side has no TLSEngine yet, so it gets the ciphertext) and each chunk is fed
in; OpenSSL's next flight is written at once, what the kernel does not take waits in the side's
`out` (the loop asks for EPOLLOUT). Nothing blocks the thread: a client that stalls is one entry
in the timer heap, ended at the listener's `login` timeout (trio's accept_tls bounds the
handshake so).

Off the engine's thread: a handshake step (feed the chunk, `handshake()`, take the flight) is
0.3-0.7 ms of OpenSSL during which every relayed session of the engine would wait. With
`relay.tls_handshake_threads` (Engine.handshakes, tls_handshake_pool.py) the step runs on a
handshake thread (`_step`; OpenSSL releases the GIL) and its result comes back through the
engine's wake-up (`Engine.post`) as a step of this session (`_stepped`: the flight written,
then done, failed or waiting). Meanwhile (`busy`) the TLSEngine is that thread's alone: the
client is not read (its bytes wait in the kernel; a hang-up's, read regardless, are `held`; a
reset ends the handshake at once, else the level-triggered epoll would report it at every
poll until the step is done), while the timeout, a drain, a kick or shutdown_timeout may end
the session as before (nothing of theirs touches the TLSEngine of a handshake not done; the
step's result is then dropped, a step still queued is skipped). The queue is bounded
(HANDSHAKE_QUEUE): when it is full the step runs in the engine's thread, as with no pool, so a
storm never grows memory beyond it.

When the handshake completes, the ALPACA check of trio's path runs (net/tls.alpn_refusal), the
connection's Conn takes a TLSStream over the same socket and TLSEngine (what trio's handshake
gives), and the session becomes the ImapEngineLogin that engine_accept makes for a plain client
(`Engine.succeed`: same descriptor, registrations, drain and end): the greeting goes out
encrypted, and what the client sent right after its Finished (a pipelined command in the
TLSEngine already) is read at once. The handshake's ciphertext is not counted in the session's
bytes (trio's path counts plaintext only): the side reads and writes through a Conn of its own.

A failure (a bad record, an EOF, OpenSSL's refusal: its alert is written if the kernel takes it),
the timeout or ALPACA's refusal is counted in tls_handshakes with trio's reasons and ends the
session with trio's close reason (tls_handshake_failed, tls_timeout, tls_alpn_refused: the
session_end line); a drain ends a handshake under way (shutdown), as do the admin kick and
shutdown_timeout through engine_accept.
"""

from __future__ import annotations

import ssl
from functools import partial
from typing import TYPE_CHECKING, Callable

from ..net.conn import Conn, TLSStream
from ..net.tls import alpn_refusal, handshake_failure
from ..net.tls_engine import TLSEngine
from ..session.failures import Close
from ..session.starttls import handshake_done
from .engine_session import IN, OUT, EngineSession, Side

if TYPE_CHECKING:
    import trio

    from ..session.context import Session
    from .engine import Engine

__all__ = ["TLSAccept"]


class TLSAccept(EngineSession):
    """The handshake of an accepted implicit-TLS client; `then(engine)` makes the session that
    carries it on once encrypted (the connection's Conn has its TLSStream then)."""

    __slots__ = ("conn", "stream", "tls", "until", "then", "busy", "held")

    def __init__(self, eng: Engine, session: Session, conn: Conn, stream: trio.SocketStream,
                 fd: int, tls: TLSEngine, then: Callable[[], EngineSession]):
        super().__init__(eng, session, Conn(stream), fd, None, -1)   # (its own counts: see above)
        self.conn, self.stream, self.tls, self.then = conn, stream, tls, then
        self.until = eng.clock() + session.listener.timeouts.login
        self.busy = False   # a step runs on a handshake thread: `tls` is that thread's
        self.held = b""     # read meanwhile (a hang-up's rest)

    def received(self, side: Side, data: bytes) -> None:
        if self.busy:   # not read meanwhile, but a hang-up is reported and read regardless
            if not data:   # (a reset: reported again at every poll, level-triggered, so it
                self._failed("handshake_failed")   # ends now, as it would after the step)
            else:   # (what the kernel held: bounded)
                self.held = self.held + data if self.held else data
            return
        pool = self.engine.handshakes
        if pool is not None and pool.size:
            self.busy = True
            if pool.submit(partial(self._step, data)):
                return
            self.busy = False   # the queue is full: this step runs here (memory stays bounded)
        self._stepped(*self._advance(data))

    def _advance(self, data: bytes) -> tuple[bool, str | None, bytes]:
        """Feed `data`, run the handshake as far as it goes: (done, the failure's reason, the
        flight to write). The CPU-heavy part: any thread, while no other touches `tls`."""
        tls = self.tls
        failure = None
        try:
            tls.receive_data(data)
            done = tls.handshake()
        except ssl.SSLError as exc:   # (an EOF before the end: SSLEOFError)
            done, failure = False, handshake_failure(exc).reason
        if not done and not data:   # (OpenSSL raises at an EOF; never left waiting regardless)
            failure = "handshake_failed"
        return done, failure, tls.data_to_send() if tls.wants_send else b""

    def _step(self, data: bytes) -> None:
        """A handshake thread's step; its result goes back to the engine's thread."""
        if self.done:   # (ended while queued: a drain, a kick, the timeout)
            return
        try:
            result = self._advance(data)
        except Exception as exc:   # a bug: it ends the session in the engine's thread, as one
            self.engine.post(self, _raise, exc)   # in any step does (`_guarded`), not left busy
            return
        self.engine.post(self, self._stepped, *result)

    def _stepped(self, done: bool, failure: str | None, flight: bytes) -> None:
        """The engine's thread: write the flight, then go on, fail or wait for more."""
        self.busy = False
        if flight:
            self.client.write(flight)   # (with a failure: OpenSSL's alert, if the kernel takes it)
        if failure is not None:
            self._failed(failure)
        elif done:
            self._done()
        elif self.held:   # what was read while the step ran
            held, self.held = self.held, b""
            self.received(self.client, held)

    def masks(self) -> tuple[int, ...]:
        return (OUT if self.client.out else 0 if self.busy else IN,)

    def due(self) -> float:
        return self.until

    def timer(self, now: float) -> None:
        if now >= self.until:
            self._failed("timeout")

    def drained(self) -> None:
        self.session.close_reason = Close.SHUTDOWN
        self.finish()

    def _failed(self, reason: str) -> None:
        close = handshake_done(self.session, reason)
        assert close is not None
        self.session.close_reason = close
        self.finish()

    def _done(self) -> None:
        session = self.session
        refused = alpn_refusal(self.tls, session.listener.protocol)
        if refused is not None:
            self._failed(refused.reason)
            return
        if self.client.conn.closed:   # (its flight could not be written: the client is gone)
            self._failed("handshake_failed")
            return
        handshake_done(session, None)
        self.conn.replace_stream(TLSStream(self.stream, self.tls))
        successor = self.then()
        self.engine.succeed(self, successor)
        if self.tls.has_unread and not successor.done:   # (sent right after its Finished)
            self.engine.tls_pending(successor.client)


def _raise(exc: Exception) -> None:
    """A handshake thread's bug, raised again in the engine's thread (`TLSAccept._step`)."""
    raise exc
