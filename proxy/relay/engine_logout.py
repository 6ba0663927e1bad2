"""An IMAP relay session in the engine after the LOGOUT the relay answered itself.

Theory of operation (issue 16): when the relay core answers a client's LOGOUT (imap_core.py
`answer_logout`, RFC 3501 6.1.3), the LOGOUT has gone upstream too, so that the upstream logs
the user out cleanly (Dovecot: "Logged out", its mailbox closed and committed). The relay
session (engine_imap.py) writes the BYE and the tagged OK to the client and is carried on by a
`LoggedOut` session over the same descriptors (Engine.succeed: the task, the accept's end, the
drain go with it), which reads and discards the upstream's BYE and tagged OK until its end of
stream, or LOGOUT_WAIT at most; then the session's usual end follows (engine_accept.py, or its
task), with both connections closed as always and the session's reason client_logout. The
client never waits for the upstream's logout: it has its answer at once. Most clients close
then; one that waits for the server's close (RFC 3501 6.1.3: the server closes after the OK)
gets it when the upstream has closed: the session's end half-closes the client and reads what
it still sends (the lingering close: engine_accept.Accepted._linger, Conn.linger), so a plain
client is not read here at all (issue 16: its end of stream was a wake-up, a read and an
epoll_ctl per session, and a client waiting for the close waited LOGOUT_WAIT for it). A TLS
client is read until the upstream's end (its close_notify; a TLS stream cannot half-close, so
nothing reads it after), then the session ends whether it has closed or not. The upstream's
connection ends by its own close in the common case (no RST, nothing unread), and nothing is
left once the session has ended.

Not done: half-closing the client right after the OK. Measured (bench/syscalls.py): a client
shut both ways is reported hung up at every poll (EPOLLHUP ignores the mask) until the
upstream's close, 2.3 more wake-ups and 5.5 more reads per session. A plain client that only
closed its side is not hung up (no EPOLLRDHUP asked), so leaving it unread costs no wake-up; one
that resets is (EPOLLERR/EPOLLHUP): its end, reported again at every poll, ends the session.
"""

from __future__ import annotations

from .engine_session import IN, OUT, EngineSession, Side

__all__ = ["LOGOUT_WAIT", "LoggedOut"]

LOGOUT_WAIT = 1.0   # seconds the upstream has to answer a LOGOUT the relay answered, and close


class LoggedOut(EngineSession):
    """The relay session `relay` after its LOGOUT was answered (the module's docstring)."""

    __slots__ = ("relay", "until", "open")

    def __init__(self, relay: EngineSession, until: float):
        super().__init__(relay.engine, relay.session, relay.client.conn, relay.client.fd,
                         relay.upstream.conn, relay.upstream.fd)
        for mine, theirs in zip(self.sides, relay.sides, strict=True):
            mine.out, theirs.out = theirs.out, b""   # (what the kernel has not taken yet)
        self.relay = relay
        self.until = until
        # the sides read to their end: the upstream; a TLS client too (see the module's
        # docstring), a plain one is read by the session's end (the lingering close)
        self.open = {self.upstream} if self.client.tls is None else {self.client,
                                                                        self.upstream}

    def received(self, side: Side, data: bytes) -> None:
        if data:   # discarded: the upstream's BYE and OK, what a TLS client still sends
            return
        if side is self.client and side in self.open:
            self.open.discard(side)   # (a TLS client's close_notify and end: no longer read)
            return
        self.finish()   # the upstream closed; or a side's end came again (a reset hangs up
        # for good)

    def released(self) -> None:
        """What a plain side still holds goes back to the relay session's side: the session's
        end flushes that one (engine_entry.run_in_engine, engine_login_task.taken_back), and
        ours keeps it too, so that the accept's end sees it (engine_accept.Accepted.ended). A TLS
        side's is requeued in its TLSEngine by the release."""
        for mine, theirs in zip(self.sides, self.relay.sides, strict=True):
            if mine.out and mine.tls is None:
                theirs.out = mine.out

    def masks(self) -> tuple[int, ...]:
        return tuple((OUT if side.out else 0) | (IN if side in self.open else 0)
                     for side in self.sides)

    def due(self) -> float:
        return self.until

    def timer(self, now: float) -> None:
        self.finish()
