"""Reuse of authenticated upstream IMAP connections in the relay engine: its I/O (the decisions
are upstream_pool.py's, sans-IO; its docstring says what is reused and when).

Theory of operation: a relay session whose upstream has `reuse:` and whose login was the
engine's (engine_login.py) carries a `Reusable` (`ImapEngineSession.reuse`): the login's HMAC
secret, when that connection's upstream login happened, and a SessionState judging each client
chunk before the relay core sees it (`client_chunk`; the fused step is not used by such a
session, so every chunk comes here). A chunk that taints the connection drops the Reusable
(counted `unparkable`) and the session goes on as any. A chunk that is a LOGOUT alone, at rest
(no command owed, nothing held, both parsers between responses, nothing waiting to be written),
is answered by the proxy (BYE and the tagged OK, as imap_core_ends.answer_logout) and *never
forwarded*; the client's end of stream at rest is taken the same way (nothing to answer, the
session's reason client_closed). The session goes on as `Parking`, which sends UNSELECT when a
mailbox may be selected (RFC 3691; never CLOSE, which expunges), reads its tagged OK, and parks
a duplicate of the upstream's descriptor (the session's end closes its own, which the engine
unregisters first: the parked one is in no epoll). Anything else from the upstream (NO, BAD,
BYE, an EOF, a line past the OK, LOGOUT_WAIT without an answer) closes the connection as any
session's end.

A login (`take`) of the same user and secret takes the most recent parked connection of its
upstream once a peek (MSG_PEEK, non-blocking) finds nothing pending: a connection that got data
or an EOF while parked is dropped (`closed`). Everything here runs in the engine's thread under
its lock; the pools are the engine's (one per process), one per upstream, with one HMAC key.
A drain empties them (its callback takes the lock from trio's thread); a reload does at the
next park or take (entries are owned by the runtime that parked them).
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import ImapService, Reuse, Upstream
from ..session.context import Session
from ..session.failures import Close
from .engine_logout import LOGOUT_WAIT, LoggedOut
from .engine_session import Side
from .upstream_pool import Parked, Pool, SessionState
from .upstream_pool import secret as pool_secret

if TYPE_CHECKING:
    from .engine import Engine
    from .engine_imap import ImapEngineSession

__all__ = ["Parking", "Reusable", "client_chunk", "count", "pool_user", "reusable", "reuse_of", "secret",
           "take"]

_UNSELECT_TAG = b"R1"   # the proxy's own tag: nothing else is in flight then


@dataclass(slots=True)
class ParkedConnection:
    sock: socket.socket
    capabilities: tuple[bytes, ...]


@dataclass(slots=True)
class Reusable:
    """What a relay session needs to park its upstream connection at its LOGOUT."""

    name: str
    user: str
    secret: bytes
    logged_in: float   # the engine's clock at that connection's real upstream login
    capabilities: tuple[bytes, ...]
    state: SessionState


class _Pools:
    __slots__ = ("key", "by_upstream", "drain_seen")

    def __init__(self) -> None:
        self.key = os.urandom(32)
        self.by_upstream: dict[str, Pool[ParkedConnection]] = {}
        self.drain_seen: object = None   # the Drain whose start empties these pools


_POOLS: weakref.WeakKeyDictionary[Engine, _Pools] = weakref.WeakKeyDictionary()


def reuse_of(upstream: Upstream) -> Reuse | None:
    svc = upstream.imap
    return svc.reuse if isinstance(svc, ImapService) else None


def _pool(engine: Engine, session: Session, name: str, size: int) -> Pool[ParkedConnection] | None:
    """The upstream's pool (None while the process drains: emptied then)."""
    pools = _POOLS.get(engine)
    if pools is None:
        pools = _POOLS[engine] = _Pools()
    drain = session.runtime.drain
    if pools.drain_seen is not drain and not drain.is_set():
        pools.drain_seen = drain
        here = threading.get_ident()   # (the engine's thread, under its lock)
        # at the drain's start (trio's thread), or at once if it started since the test above
        drain.subscribe(lambda: _empty(engine, session) if threading.get_ident() == here
                        else engine.locked(_empty, engine, session))
    if drain.is_set():
        _empty(engine, session)
        return None
    pool = pools.by_upstream.get(name)
    if pool is None:
        pool = pools.by_upstream[name] = Pool(size)
    pool.size = size   # (a reload may change it; the next park trims)
    return pool


def _empty(engine: Engine, session: Session) -> None:
    pools = _POOLS.get(engine)
    if pools is not None:
        for name, pool in pools.by_upstream.items():
            _drop(session, name, pool.clear())


def _drop(session: Session, name: str, dropped: list[tuple[Parked[ParkedConnection], str]]) -> None:
    metrics = session.runtime.metrics
    for entry, reason in dropped:
        entry.conn.sock.close()
        metrics.child(metrics.upstream_reuse, entry.upstream, reason).inc()


def count(session: Session, name: str, outcome: str) -> None:
    metrics = session.runtime.metrics
    metrics.child(metrics.upstream_reuse, name, outcome).inc()


def pool_user(session: Session, upstream: Upstream, user: str) -> str:
    """Whose connection it is: the user, and the client's and the proxy's addresses when the
    upstream is told them (`forward_client_ip`: the ID at login carries x-originating-ip and
    x-connected-ip, imap_upstream.id_fields; Dovecot's logs, per-address limits and `local`
    settings use them), so that a reused connection is never another address's."""
    if not upstream.forward_client_ip:
        return user
    return f"{user}\x00{session.client_ip}\x00{session.local_ip}"


def secret(engine: Engine, user: str, password: bytes) -> bytes:
    """A login's HMAC secret under this process's key (upstream_pool.secret)."""
    pools = _POOLS.get(engine)
    if pools is None:
        pools = _POOLS[engine] = _Pools()
    return pool_secret(pools.key, user, password)


# -- a login ---------------------------------------------------------------------------------
def take(engine: Engine, session: Session, name: str, reuse: Reuse, user: str, key: bytes
         ) -> tuple[socket.socket, tuple[bytes, ...], float] | None:
    """A parked connection of (`name`, `user`) with the secret `key`: its socket, capabilities
    and the time of its upstream login; None (a miss) otherwise."""
    pool = _pool(engine, session, name, reuse.size)
    if pool is None:
        return None
    while True:
        found, dropped = pool.take(name, user, key, session.runtime, engine.now, reuse.max_age,
                                   reuse.max_idle)
        _drop(session, name, dropped)
        if found is None:
            count(session, name, "miss")
            return None
        sock = found.conn.sock
        if _quiet(sock):
            count(session, name, "hit")
            return sock, found.conn.capabilities, found.logged_in
        _drop(session, name, [(found, "closed")])


def _quiet(sock: socket.socket) -> bool:
    """Nothing pending on a parked socket: no data (a BYE), no EOF, no error."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


# -- a relay session -------------------------------------------------------------------------
def reusable(name: str, user: str, key: bytes, logged_in: float,
             capabilities: tuple[bytes, ...]) -> Reusable:
    """The Reusable of a session logged in on an upstream with `reuse:`."""
    return Reusable(name, user, key, logged_in, capabilities, SessionState())


def client_chunk(sess: ImapEngineSession, data: bytes) -> bool:
    """Judge a client chunk before the relay core sees it (engine_imap.py `received`): True
    when it was a LOGOUT answered here, or the client's end (b""), at rest (the session goes
    on as Parking), False otherwise."""
    reuse = sess.reuse
    assert reuse is not None
    tag = reuse.state.chunk(data) if data else None   # b"": the client's end (EOF)
    if reuse.state.tainted:
        sess.reuse = None
        count(sess.session, reuse.name, "unparkable")
        return False
    if tag is None and data:
        return False
    core, engine, session = sess.core, sess.engine, sess.session
    upstream = session.runtime.config.upstreams.get(reuse.name)
    settings = reuse_of(upstream) if upstream is not None else None
    waited = sess.task is not None or sess.ended is not None   # (as engine_imap._logged_out)
    if (settings is None or not waited or core.end is not None or core.inflight.pending
            or core.replies or core.compressed or core.compress is not None or core.held.held
            or not core.client_parser.at_boundary or not core.upstream_parser.at_boundary
            or sess.client.out or sess.upstream.out or session.runtime.drain.is_set()
            or engine.now - reuse.logged_in >= settings.max_age
            or (reuse.state.selected and not _has(reuse.capabilities, b"UNSELECT"))):
        sess.reuse = None
        count(session, reuse.name, "unparkable")
        return False   # (the LOGOUT goes upstream, as without reuse)
    if tag is None:   # the client closed at rest: nothing to answer
        sess.client.conn.eof = True
        core.finish(Close.CLIENT_CLOSED)
    else:   # the LOGOUT, answered here as imap_core_ends.answer_logout does (RFC 3501 6.1.3)
        session.commands += 1
        core.last_active = engine.now
        core.inflight.start(tag, "LOGOUT")
        core.inflight.complete(tag, b"OK")
        core.logout_seen = core.logged_out = True
        core.finish(Close.CLIENT_LOGOUT)
        sess.send(sess.client, b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
    unselect = _UNSELECT_TAG if reuse.state.selected else None
    if unselect is not None and not sess.send(sess.upstream, unselect + b" UNSELECT\r\n"):
        sess.reuse = None
        count(session, reuse.name, "unparkable")
    sess.released()   # (succeeded, never released: a splice's pipe is given back here)
    engine.succeed(sess, Parking(sess, reuse if sess.reuse is not None else None, unselect,
                                 engine.now + LOGOUT_WAIT))
    return True


def _has(capabilities: tuple[bytes, ...], name: bytes) -> bool:
    return any(cap.upper() == name for cap in capabilities)


class Parking(LoggedOut):
    """A relay session after the LOGOUT `client_chunk` answered: its upstream connection parked
    once UNSELECT's OK is read (or at once when nothing was selected), then the session ends."""

    __slots__ = ("reuse", "tag", "buffer")

    def __init__(self, relay: ImapEngineSession, reuse: Reusable | None, tag: bytes | None,
                 until: float):
        super().__init__(relay, until)   # (sides, `released`, `masks`, `due` as LoggedOut's)
        self.reuse = reuse
        self.tag = tag
        self.buffer = b""
        if self.client.conn.eof:   # (a TLS client is read until its end, not after it)
            self.open.discard(self.client)

    def start(self) -> None:
        if self.reuse is None:
            self._end_unparked()
        elif self.tag is None:
            self._park()

    def received(self, side: Side, data: bytes) -> None:
        if side is self.client:
            if not data:
                self.open.discard(side)
            return
        if not data or self.tag is None:   # the upstream closed, or spoke unasked
            self._end_unparked()
            return
        self.buffer += data
        tagged = b"\r\n" + self.tag + b" "
        at = (b"\r\n" + self.buffer).find(tagged)
        if at < 0:
            if b"\r\n* BYE" in b"\r\n" + self.buffer or len(self.buffer) > 65536:
                self._end_unparked()
            return
        line, _, rest = self.buffer[at:].partition(b"\r\n")
        if not rest and line.upper().startswith(self.tag + b" OK") and not _bye(self.buffer[:at]):
            self._park()
        else:   # refused (NO, BAD), or more came after the OK
            self._end_unparked()

    def _park(self) -> None:
        reuse = self.reuse
        assert reuse is not None
        settings = reuse_of(self.session.runtime.config.upstreams[reuse.name])
        pool = None if settings is None else _pool(self.engine, self.session, reuse.name,
                                                    settings.size)
        if pool is None or settings is None:
            self._end_unparked()
            return
        sock = socket.socket(fileno=os.dup(self.upstream.fd))   # (ours closes at the end)
        now = self.engine.now
        entry = Parked(reuse.name, reuse.user, reuse.secret, reuse.logged_in, now,
                       self.session.runtime, ParkedConnection(sock, reuse.capabilities))
        dropped = pool.expire(now, settings.max_age, settings.max_idle) + pool.park(entry)
        count(self.session, reuse.name, "parked")
        _drop(self.session, reuse.name, dropped)
        self.reuse = None
        self.tag = None
        self.finish()

    def _end_unparked(self) -> None:
        if self.reuse is not None:
            count(self.session, self.reuse.name, "unparkable")
            self.reuse = None
        self.finish()

    def timer(self, now: float) -> None:
        self._end_unparked()


def _bye(untagged: bytes) -> bool:
    return b"\r\n* BYE" in b"\r\n" + untagged.upper()

