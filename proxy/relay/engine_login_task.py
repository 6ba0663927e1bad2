"""The connection's task around a session the relay engine runs from its greeting.

`run_from_greeting` hands a fresh IMAP relay session to the engine (engine_login.py) and takes it
back where the engine stops: nowhere (it ended there, or ran to its end as a relay), at an event
trio goes on from (ImapFront's dialogue, imap_session._authenticate), at a `DecidedLogin` (a
login the engine asked the upstream, answered by trio from its outcome), or at COMPRESS (the
task path relays on from the engine's relay core).
"""

from __future__ import annotations

from ..session import connect_early
from ..session.imap_front import ImapFront
from .engine_entry import raw_fd
from .engine_imap import ImapEngineSession
from .engine_login import ImapEngineLogin
from .engine_session import Side
from .imap_relay import ImapRelay
from .relay_session import release_early

__all__ = ["engine_ready", "run_from_greeting", "taken_back"]


def engine_ready(front: ImapFront) -> int | None:
    """The client's descriptor when the engine can run this session from its greeting."""
    session = front.session
    relay = session.runtime.config.relay
    if relay.engine != "epoll" or not relay.engine_login or front.greeted:
        return None
    return raw_fd(front.conn)


async def run_from_greeting(front: ImapFront) -> tuple[bool, object]:
    """Run the session in the engine from its greeting: (True, None) when it ended there (or
    on the task path after a COMPRESS), else (False, the event trio goes on from) with the
    front as the engine left it (greeted, counters, parser, the login's deadline)."""
    client_fd = engine_ready(front)
    if client_fd is None:
        return False, None
    session = front.session
    target = session.runtime.early_targets.get("imap")
    if target is not None:   # connect_early: the upstream's accept and greeting meanwhile
        session.early = connect_early.start(target)
    sess = ImapEngineLogin(front, client_fd)
    try:
        await sess.engine.relay(sess)
    except BaseException:   # cancelled (kick, shutdown_timeout): out of the engine already
        if isinstance(sess.successor, ImapEngineSession):
            sess.successor.core.settle()
            await sess.successor.upstream.conn.aclose()
        raise
    finally:
        if sess.successor is None and sess.login is not None:   # (closed twice is fine)
            sess.login.sock.close()
        if not sess.handed_back:   # (ended in the engine, or cancelled)
            release_early(session)
    if not sess.done:   # never taken (its thread died): trio from the start
        return False, None
    return await taken_back(front, sess)


async def taken_back(front: ImapFront, sess: ImapEngineLogin) -> tuple[bool, object]:
    """`run_from_greeting`'s answer for `sess`, released by the engine (ended or handed
    back; also a session the engine accepted itself, engine_accept.py)."""
    relay = sess.successor
    if relay is None:
        await _flush(sess.client)
        if sess.handed_back:
            front.login_deadline = sess.login_at
            return False, sess.pending
        return True, None
    assert isinstance(relay, ImapEngineSession)
    upstream = relay.upstream.conn
    try:
        for side in relay.sides:
            await _flush(side)
        if relay.handed_back:   # COMPRESS: the task path goes on (and settles the core)
            await ImapRelay.resumed(front.session, front.conn, upstream, relay.core).run(
                engine=False)
    finally:
        if not relay.handed_back:
            relay.core.settle()
        await upstream.aclose()
    return True, None


async def _flush(side: Side) -> None:
    rest, side.out = bytes(side.out), b""
    if rest:
        await side.conn.send(rest)
