"""The upstream of a session whose LOGOUT the relay answered itself, closed off the client's path.

Theory of operation (issue 16): when the relay core answers a client's LOGOUT (imap_core.py
`answer_logout`, RFC 3501 6.1.3), the LOGOUT has gone upstream too, so that the upstream logs
the user out cleanly (Dovecot: "Logged out", its mailbox closed and committed), and the session
ends at once: the client is closed as always, and the upstream's descriptor is closed by its
owner as always (the engine's accept, the session's task). Before that, `hold` takes a duplicate
of the upstream's descriptor into the engine as an `UpstreamLogout` entry, which reads and
discards the upstream's answer (its BYE and tagged OK; ciphertext on a TLS upstream, never
decrypted) until the upstream closes, or LOGOUT_WAIT at most, then closes the duplicate: only
then does the connection end, by the upstream's own close in the common case (no RST, nothing
unread). The entry counts in the engine's sessions (mailproxy_relay_engine_sessions) meanwhile.

Bounded, never leaked: each entry has its LOGOUT_WAIT timer; a trio system task per engine
(started with its first entry) releases every entry left at the trio run's end, and an engine
whose thread dies releases all it holds (engine_loop.py), each release closing the duplicate.
A drain or a kick does not concern it: the session has ended. The task path (imap_relay.py,
no engine) waits for the upstream's close itself, after the client's.
"""

from __future__ import annotations

import os
import weakref

import trio

from ..net.conn import Conn
from ..session.context import Session
from .engine import Engine
from .engine_session import IN, EngineSession, Side

__all__ = ["LOGOUT_WAIT", "UpstreamLogout", "hold"]

LOGOUT_WAIT = 1.0   # seconds an upstream has to answer a LOGOUT the relay answered, and close

# the entries each engine holds, for the run's end (touched under the engine's lock)
_HELD: weakref.WeakKeyDictionary[Engine, set[UpstreamLogout]] = weakref.WeakKeyDictionary()


def hold(eng: Engine, session: Session, upstream: Side) -> bool:
    """Keep `upstream`'s connection open in the engine, on a duplicate of its descriptor, until
    the upstream closes it or LOGOUT_WAIT; False (nothing held) when the engine cannot (the trio
    run is ending). Engine thread, under the lock, before the session's release."""
    held = _HELD.get(eng)
    if held is None:
        held = set()
        try:   # (trio's thread starts the task that releases what is left at the run's end)
            eng._token.run_sync_soon(_watch_run_end, eng, held)
        except trio.RunFinishedError:
            return False
        _HELD[eng] = held
    try:
        fd = os.dup(upstream.fd)
    except OSError:   # (out of descriptors: the owner's close ends it at once)
        return False
    entry = UpstreamLogout(eng, session, Conn(upstream.conn.stream), fd,
                           eng.now + LOGOUT_WAIT, held)
    held.add(entry)
    eng.adopt(entry)
    return True


def _watch_run_end(eng: Engine, held: set[UpstreamLogout]) -> None:
    try:
        trio.lowlevel.spawn_system_task(_release_at_run_end, eng, held)
    except RuntimeError:   # (the run is ending already)
        eng.locked(_release_all, eng, held)


async def _release_at_run_end(eng: Engine, held: set[UpstreamLogout]) -> None:
    try:
        await trio.sleep_forever()
    finally:
        eng.locked(_release_all, eng, held)


def _release_all(eng: Engine, held: set[UpstreamLogout]) -> None:
    for entry in list(held):
        eng.release(entry)


class UpstreamLogout(EngineSession):
    """An upstream read to its EOF, or LOGOUT_WAIT, then closed (the module's docstring)."""

    __slots__ = ("until", "held")

    def __init__(self, eng: Engine, session: Session, conn: Conn, fd: int, until: float,
                 held: set[UpstreamLogout]):
        super().__init__(eng, session, conn, fd, None, -1)
        self.client.tls = None   # its bytes are discarded unread: no record layer needed
        self.until = until
        self.held = held
        self.ended = self._close

    def received(self, side: Side, data: bytes) -> None:
        if not data:   # the upstream closed (or reset): done
            self.finish()

    def due(self) -> float:
        return self.until

    def timer(self, now: float) -> None:
        self.finish()

    def masks(self) -> tuple[int, ...]:
        return (IN,)

    def _close(self, _: EngineSession) -> None:
        self.held.discard(self)
        os.close(self.client.fd)
