"""How a session's trio task hands its connections to the process's relay engine (engine.py):
the engine of this trio run, the descriptor it can own, and `run_in_engine`, which the relays
call once logged in and which flushes what the engine could not write when the session ends
there or is handed back."""

from __future__ import annotations

from typing import Callable

import trio

from ..config import Relay
from ..net.conn import Conn, TLSStream
from ..session.context import Session
from .engine import Engine
from .engine_session import EngineSession
from .tls_handshake_pool import HandshakePool

__all__ = ["engine", "raw_fd", "run_in_engine"]

_ENGINE: trio.lowlevel.RunVar[Engine] = trio.lowlevel.RunVar("relay_engine")


def engine(relay: Relay) -> Engine:
    """The engine of this trio run (made on first use), at `relay`'s GIL switch interval, with
    `relay.tls_handshake_threads` handshake threads."""
    try:
        made = _ENGINE.get()
    except LookupError:
        made = Engine()
        _ENGINE.set(made)
    made.gil.configure(relay.gil_switch_interval)
    # One pool for the run, resized in place: sessions of an old and a new config (a reload)
    # may alternate here, which must not make pools (and threads) over and over.
    if made.handshakes is None:
        made.handshakes = HandshakePool(relay.tls_handshake_threads)
    else:
        made.handshakes.size = relay.tls_handshake_threads
    return made


def raw_fd(conn: Conn) -> int | None:
    """The descriptor of a TCP connection, plain or TLS, the engine can own; None otherwise (a
    stream with a PROXY-header prefix, a TLS stream mid-write or broken, COMPRESS)."""
    if conn.closed:
        return None
    stream = conn.stream
    if type(stream) is trio.SocketStream:
        return stream.socket.fileno()
    if type(stream) is TLSStream:
        return stream.detachable_fd()
    return None


async def run_in_engine(session: Session, client: Conn, upstream: Conn,
                        make: Callable[[Engine, Conn, int, Conn, int], EngineSession]) -> bool:
    """True when the session ran to its end in the engine; False when the task path is to run
    it (engine off, not TCP, or handed back). What the engine could not write is sent here
    first, so the order of bytes is kept either way."""
    relay = session.runtime.config.relay
    if relay.engine != "epoll":
        return False
    client_fd, upstream_fd = raw_fd(client), raw_fd(upstream)
    if client_fd is None or upstream_fd is None:
        return False
    sess = make(engine(relay), client, client_fd, upstream, upstream_fd)
    ended = await sess.engine.relay(sess)
    for side in (sess.client, sess.upstream):
        rest, side.out = bytes(side.out), b""
        if side.tls is not None and side.tls.wants_send:   # (requeued by release)
            await side.conn.send(b"")
        elif rest:
            await side.conn.send(rest)
    return ended
