"""An IMAP relay session in the engine after the LOGOUT the relay answered itself.

Theory of operation (issue 16): when the relay core answers a client's LOGOUT (imap_core.py
`answer_logout`, RFC 3501 6.1.3), the LOGOUT has gone upstream too, so that the upstream logs
the user out cleanly (Dovecot: "Logged out", its mailbox closed and committed). The relay
session (engine_imap.py) writes the BYE and the tagged OK to the client and is carried on by a
`LoggedOut` session over the same descriptors (Engine.succeed: the task, the accept's end, the
drain go with it). It half-closes a plain client at once, so the client sees the end of the
connection right after the OK (a TLS client, which cannot be half-closed, sees it at the
close), then reads and discards both sides (the upstream's BYE and tagged OK, whatever the
client still sends) until both have closed, or LOGOUT_WAIT at most, and ends: the session's
usual end follows (engine_accept.py, or its task), with both connections closed as always and
the session's reason client_logout. The client never waits for the upstream's logout; the
upstream's connection ends by its own close in the common case (no RST, nothing unread), and
nothing is left once the session has ended.
"""

from __future__ import annotations

import socket

import trio

from .engine_session import EngineSession, Side

__all__ = ["LOGOUT_WAIT", "LoggedOut"]

LOGOUT_WAIT = 1.0   # seconds the upstream has to answer a LOGOUT the relay answered, and close


class LoggedOut(EngineSession):
    """The relay session `relay` after its LOGOUT was answered (the module's docstring)."""

    __slots__ = ("until", "client_open", "upstream_open")

    def __init__(self, relay: EngineSession, until: float):
        super().__init__(relay.engine, relay.session, relay.client.conn, relay.client.fd,
                         relay.upstream.conn, relay.upstream.fd)
        for mine, theirs in zip(self.sides, relay.sides, strict=True):
            mine.out, theirs.out = theirs.out, b""   # (what the kernel has not taken yet)
        self.until = until
        self.client_open = self.upstream_open = True

    def start(self) -> None:
        stream = self.client.conn.stream
        if isinstance(stream, trio.SocketStream) and not self.client.out:   # 6.1.3: "then close"
            try:
                stream.socket.shutdown(socket.SHUT_WR)
            except OSError:   # (the client is gone already: its EOF is read next)
                pass

    def received(self, side: Side, data: bytes) -> None:
        if data:   # discarded: the upstream's BYE and OK, what the client still sends
            return
        if side is self.client:
            self.client_open = False
        else:
            self.upstream_open = False
        if not self.client_open and not self.upstream_open:
            self.finish()

    def due(self) -> float:
        return self.until

    def timer(self, now: float) -> None:
        self.finish()
