"""TLS session resumption on the proxy's TLS listeners (proxy/net/tls.py, `tls_session_tickets`),
with the real proxy process, Python's ssl as the client and the session Dovecot upstream.

On (the default, as nginx's `ssl_session_tickets`): a client that kept the session of its first
connection resumes it (TLS 1.3 and TLS 1.2 tickets), and the resumed connection logs in and is
relayed like any other. Off: no ticket is issued, so nothing resumes. Before, the listeners set
OP_NO_TICKET, under which CPython's server contexts never resumed (every lookup in the session
cache missed), while OpenSSL still issued two stateful TLS 1.3 tickets per handshake.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import trustme

from support.proxyproc import relay_config

from .test_tls import client_context, start_proxy, stop_proxy, write_pair

HOST = "127.0.0.1"
TIMEOUT = 15


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def proxy(ca, dovecot, tmp_path_factory):
    cert, key = write_pair(ca.issue_cert("localhost", "127.0.0.1"),
                           tmp_path_factory.mktemp("tls-resumption-certs"), "leaf")
    certificates = [{"cert": cert, "key": key}]
    config = relay_config(dovecot, listeners=("imap",))
    config["listeners"] = [
        {"name": name, "protocol": "imap", "mode": "relay", "address": f"{HOST}:0",
         "tls": "implicit", "certificates": certificates, **extra}
        for name, extra in (("tickets", {}), ("no_tickets", {"tls_session_tickets": False}))]
    started = start_proxy(config, tmp_path_factory, "tls-resumption")
    yield started
    stop_proxy(started)


def versioned_context(ca, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context(ca)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def imaps(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None,
          user: tuple[str, str] | None = None) -> tuple[ssl.SSLSession | None, bool, list[bytes]]:
    """One connection: the greeting (TLS 1.3 tickets come before it), then LOGIN, SELECT and
    LOGOUT when `user` is given. (the session to resume with, whether this one resumed, the
    tagged replies)."""
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        lines = tls.makefile("rb")
        assert lines.readline().startswith(b"* OK [CAPABILITY IMAP4rev1")
        tagged = []
        if user is not None:
            for tag, command in ((b"a", b"LOGIN %s %s" % (user[0].encode(), user[1].encode())),
                                 (b"b", b"SELECT INBOX"), (b"c", b"LOGOUT")):
                tls.sendall(tag + b" " + command + b"\r\n")
                while not (line := lines.readline()).startswith(tag + b" "):
                    assert line, "the proxy closed the connection"
                tagged.append(line.split(b" ")[1])
        else:
            tls.sendall(b"z LOGOUT\r\n")
            while lines.readline():
                pass
        return tls.session, tls.session_reused, tagged


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_a_client_resumes_its_session_and_is_relayed(proxy, ca, user, version):
    ctx = versioned_context(ca, version)
    port = proxy.port("tickets")
    session, resumed, _ = imaps(port, ctx, None)
    assert not resumed and session is not None and session.has_ticket
    for _ in range(2):   # (a TLS 1.3 ticket is good for one resumption: each gives new ones)
        session, resumed, tagged = imaps(port, ctx, session, user)
        assert resumed
        assert tagged == [b"OK", b"OK", b"OK"]


def test_without_tickets_no_ticket_is_issued_and_nothing_resumes(proxy, ca, user):
    ctx = versioned_context(ca, ssl.TLSVersion.TLSv1_3)
    port = proxy.port("no_tickets")
    session, resumed, _ = imaps(port, ctx, None)
    assert not resumed and (session is None or not session.has_ticket)
    _, resumed, tagged = imaps(port, ctx, session, user)
    assert not resumed
    assert tagged == [b"OK", b"OK", b"OK"]
