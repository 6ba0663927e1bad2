"""STARTTLS (IMAP) and STLS (POP3) hygiene, both sides, for both protocols.

CVE-2011-0411 class: whatever a peer sent after the STARTTLS command (client side) or after the
server's OK (upstream side), before the handshake, was sent in plaintext and may have been
injected by an attacker; it must never be read as if it came over TLS. So buffered bytes at that
moment refuse the client (RFC 3501 6.2.1, RFC 2595 4) or abort the upstream session.
`accept_tls` is the client-side handshake itself, for STARTTLS and implicit TLS alike.
"""

from __future__ import annotations

import trio

from ..net.conn import Conn
from ..net.tls import TLSHandshakeError, server_handshake
from .context import CloseSession, Session
from .failures import Close, Failure
from .upstream import UpstreamError, deadline, start_tls

_WORDS = {"imap": ("STARTTLS", "OK"), "pop3": ("STLS", "+OK")}


def client_injection(session: Session, buffered: int) -> bool:
    """True (and counted) when the client pipelined bytes after STARTTLS/STLS."""
    if buffered:
        session.runtime.metrics.starttls.labels("client", session.protocol, "injection").inc()
    return bool(buffered)


async def accept_tls(session: Session, conn: Conn) -> Close | None:
    """The server side of a client's TLS handshake (implicit TLS, or after STARTTLS/STLS),
    within the listener's `login` timeout; counted in tls_handshakes. None on success (the
    connection is then encrypted), else why the session must end."""
    listener = session.listener
    reason: str = "timeout"
    with trio.move_on_after(listener.timeouts.login):
        try:
            stream = await server_handshake(
                conn.stream, session.runtime.server_tls[listener.name], listener.protocol)
        except TLSHandshakeError as exc:
            reason = exc.reason
        else:
            conn.replace_stream(stream)
            return handshake_done(session, None)
    return handshake_done(session, reason)


def handshake_done(session: Session, failure: str | None) -> Close | None:
    """Count a client's handshake (tls_handshakes: "ok", or the `failure` reason, one of
    net.tls.HANDSHAKE_FAILURE_REASONS); None when it succeeded (the session is encrypted), else
    why the session ends. Any thread (the relay engine's handshakes, relay/engine_tls_accept.py)."""
    handshakes = session.runtime.metrics.tls_handshakes
    listener = session.listener
    if failure is None:
        handshakes.labels(listener.name, "ok").inc()
        session.tls = True
        return None
    handshakes.labels(listener.name, failure).inc()
    return Close(f"tls_{failure}")


async def upgrade_client(session: Session, conn: Conn) -> None:
    """The TLS handshake after the client was told to begin it. Raises CloseSession."""
    failed = await accept_tls(session, conn)
    protocol = session.listener.protocol
    if failed is not None:
        session.runtime.metrics.starttls.labels("client", protocol, "failed").inc()
        raise CloseSession(Close.TLS_FAILED)
    session.runtime.metrics.starttls.labels("client", protocol, "ok").inc()


async def upgrade_upstream(session: Session, name: str, conn: Conn, accepted: bool,
                           buffered: int) -> None:
    """After the upstream answered STARTTLS/STLS (`accepted`: OK/+OK). Raises UpstreamError."""
    metrics = session.runtime.metrics.starttls
    protocol = session.protocol
    command, ok = _WORDS[protocol]
    if not accepted:
        metrics.labels("upstream", protocol, "refused").inc()
        raise UpstreamError(Failure.TLS, f"upstream refused {command}")
    if buffered:
        metrics.labels("upstream", protocol, "injection").inc()
        raise UpstreamError(Failure.PROTOCOL, f"data after {command} {ok} before handshake")
    upstream = session.runtime.config.upstreams[name]
    try:
        with deadline(session.listener.timeouts.upstream_connect, "TLS handshake"):
            conn.replace_stream(await start_tls(conn.stream, upstream,
                                                lambda: session.runtime.upstream_tls.context(name)))
    except UpstreamError:
        metrics.labels("upstream", protocol, "failed").inc()
        raise
    metrics.labels("upstream", protocol, "ok").inc()
