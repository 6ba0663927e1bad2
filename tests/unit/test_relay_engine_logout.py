"""The relay engine's session after a LOGOUT the relay answered itself (proxy/relay/
engine_logout.py `LoggedOut`), alone: which sides it reads and when it ends. The session ends
at the upstream's close, not at the client's: a client that waits for the server's close after
LOGOUT's OK (RFC 3501 6.1.3) gets it then (the session's end half-closes it: the lingering
close), where it waited LOGOUT_WAIT before. A plain client is not read at all (its end is the
lingering close's to read); a TLS client is read until its end or the upstream's.
tests/integration/test_relay_logout.py runs the whole path against Dovecot on each driver."""

from __future__ import annotations

import types

from proxy.net.tls_stream import TLSStream
from proxy.relay.engine_logout import LoggedOut
from proxy.relay.engine_session import IN, EngineSession


class _TLS(TLSStream):
    """A Side's TLS marker only (Side reads `stream.engine`): no handshake, no socket."""

    def __init__(self) -> None:
        self.engine = object()


def _conn(tls: bool = False) -> types.SimpleNamespace:
    return types.SimpleNamespace(stream=_TLS() if tls else None, closed=False, eof=False,
                                 bytes_in=0, bytes_out=0)


def logged_out(tls: bool = False) -> tuple[LoggedOut, list[EngineSession]]:
    released: list[EngineSession] = []
    engine = types.SimpleNamespace(release=released.append)
    relay = EngineSession(engine, types.SimpleNamespace(), _conn(tls), 10,  # type: ignore[arg-type]
                          _conn(), 11)  # type: ignore[arg-type]
    return LoggedOut(relay, until=5.0), released


def test_a_plain_client_is_not_read_and_the_upstreams_close_ends_the_session():
    sess, released = logged_out()
    assert sess.masks() == (0, IN)   # the upstream only
    sess.received(sess.upstream, b"* BYE Logging out\r\nc OK Logout completed.\r\n")
    assert released == []
    sess.received(sess.upstream, b"")   # the client has not closed: the session ends anyway
    assert released == [sess]


def test_a_plain_client_that_resets_ends_the_session():
    """(Reported hung up at every poll whatever the mask: the session cannot wait.)"""
    sess, released = logged_out()
    sess.received(sess.client, b"")
    assert released == [sess]


def test_a_tls_client_is_read_to_its_end_and_the_upstreams_close_ends_the_session():
    sess, released = logged_out(tls=True)
    assert sess.masks() == (IN, IN)
    sess.received(sess.client, b"what it still sends")
    sess.received(sess.client, b"")   # its close_notify, or its end
    assert released == [] and sess.masks() == (0, IN)
    sess.received(sess.upstream, b"")
    assert released == [sess]


def test_a_tls_client_still_open_does_not_hold_the_session_after_the_upstreams_close():
    sess, released = logged_out(tls=True)
    sess.received(sess.upstream, b"")
    assert released == [sess]


def test_the_bound_ends_it():
    sess, released = logged_out()
    assert sess.due() == 5.0
    sess.timer(5.0)
    assert released == [sess]
