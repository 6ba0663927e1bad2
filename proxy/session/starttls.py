"""STARTTLS (IMAP) and STLS (POP3) hygiene, both sides, for both protocols.

CVE-2011-0411 class: whatever a peer sent after the STARTTLS command (client side) or after the
server's OK (upstream side), before the handshake, was sent in plaintext and may have been
injected by an attacker; it must never be read as if it came over TLS. So buffered bytes at that
moment refuse the client (RFC 3501 6.2.1, RFC 2595 4) or abort the upstream session.
"""

from __future__ import annotations

from .failures import Failure
from ..net.conn import Conn
from ..net.tls import TLSHandshakeError, server_handshake
from .context import CloseSession, Session
from .upstream import UpstreamError, upstream_tls_handshake


_WORDS = {"imap": ("STARTTLS", "OK"), "pop3": ("STLS", "+OK")}


def client_injection(session: Session, buffered: int) -> bool:
    """True (and counted) when the client pipelined bytes after STARTTLS/STLS."""
    if buffered:
        session.runtime.metrics.starttls.labels("client", session.protocol, "injection").inc()
    return bool(buffered)


async def upgrade_client(session: Session, conn: Conn) -> None:
    """The TLS handshake after the client was told to begin it. Raises CloseSession."""
    listener = session.listener
    metrics = session.runtime.metrics
    try:
        stream = await server_handshake(conn.stream, session.runtime.server_tls[listener.name],
                                        listener.protocol, listener.timeouts.login)
    except TLSHandshakeError as exc:
        metrics.starttls.labels("client", listener.protocol, "failed").inc()
        metrics.tls_handshakes.labels(listener.name, exc.reason).inc()
        raise CloseSession("tls_failed") from None
    metrics.starttls.labels("client", listener.protocol, "ok").inc()
    metrics.tls_handshakes.labels(listener.name, "ok").inc()
    conn.replace_stream(stream)
    session.tls = True


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
    try:
        conn.replace_stream(await upstream_tls_handshake(session, name, conn.stream))
    except UpstreamError:
        metrics.labels("upstream", protocol, "failed").inc()
        raise
    metrics.labels("upstream", protocol, "ok").inc()
