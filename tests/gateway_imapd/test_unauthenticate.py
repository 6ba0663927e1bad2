"""UNAUTHENTICATE (RFC 8437) on the gateway. Dovecot 2.3.19 does not offer it (its CAPABILITY
has no UNAUTHENTICATE), so these follow the RFC's text: back in the not-authenticated state
with no greeting (3), the account released (selected mailbox, the change hub's subscription, the
session count), a new LOGIN then works for another user; pipelined commands after it are
answered by the pre-login dialogue; a COMPRESS layer stays on (it is the connection's)."""

from __future__ import annotations

import imaplib

import trio
from gateway_mime import wire

from support.deflate_imap import DeflateIMAP4
from support.polling import wait_for

from .conftest import message

run = trio.to_thread.run_sync


def _command(client: imaplib.IMAP4, tag: bytes, line: bytes) -> list[bytes]:
    client.send(tag + b" " + line + b"\r\n")
    return wire.read_response(client.readline, client.read, tag)


def _sessions(gateway) -> float:
    return gateway.metrics.registry.get_sample_value("mailproxy_gateway_sessions")


def _listeners(gateway) -> int:
    return sum(len(views) for backend in gateway.service._backends.values()
               for views in backend.hub._listeners.values())


async def test_unauthenticate_then_login_as_another_user(gateway):
    other, other_password = gateway.dovecot.add_user()
    gateway.deliver(message(1, subject="for the first user"))
    for n in (2, 3):
        gateway.deliver(message(n, subject="for the other user"), user=other)

    def scenario():
        client = gateway.imaplib()
        assert b"UNAUTHENTICATE" in client.capability()[1][0].split()
        assert _command(client, b"a1", b"SELECT INBOX")[-1].startswith(b"a1 OK [READ-WRITE]")
        assert (_sessions(gateway), _listeners(gateway)) == (1, 1)
        assert _command(client, b"a2", b"UNAUTHENTICATE extra") == [
            b"a2 BAD UNAUTHENTICATE takes no arguments\r\n"]
        # 3: OK, and no greeting follows it
        assert _command(client, b"a3", b"UNAUTHENTICATE") == [b"a3 OK UNAUTHENTICATE completed.\r\n"]
        assert _listeners(gateway) == 0   # released before the OK
        wait_for(lambda: _sessions(gateway) == 0, "the account's session count released")
        # not authenticated: the pre-login dialogue answers
        assert _command(client, b"a4", b"SELECT INBOX") == [
            b"a4 BAD Command unknown or not allowed before login.\r\n"]
        assert _command(client, b"a5", b"UNAUTHENTICATE") == [
            b"a5 BAD Command unknown or not allowed before login.\r\n"]
        assert _command(client, b"a6", b"NOOP") == [b"a6 OK NOOP completed.\r\n"]
        login = _command(client, b"a7", b"LOGIN %s %s" % (other.encode(), other_password.encode()))
        assert login[-1].startswith(b"a7 OK [CAPABILITY IMAP4rev1 ")
        assert b"* 2 EXISTS\r\n" in _command(client, b"a8", b"SELECT INBOX")
        fetched = _command(client, b"a9", b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert [line.split(b"\r\n")[1] for line in fetched[:-1]] == [
            b"Subject: for the other user"] * 2
        assert (_sessions(gateway), _listeners(gateway)) == (1, 1)
        client.logout()

    await run(scenario)


async def test_unauthenticate_pipelined_login_and_compress_kept(gateway):
    gateway.deliver(message(1))

    def scenario():
        client = DeflateIMAP4("127.0.0.1", gateway.port, timeout=20)
        client.login(gateway.user, gateway.password)
        client.compress()
        # UNAUTHENTICATE, a command before login and a LOGIN, in one write
        client.send(b"b1 UNAUTHENTICATE\r\nb2 CAPABILITY\r\nb3 LOGIN %s %s\r\n"
                    % (gateway.user.encode(), gateway.password.encode()))
        assert wire.read_response(client.readline, client.read, b"b1") == [
            b"b1 OK UNAUTHENTICATE completed.\r\n"]
        capability = wire.read_response(client.readline, client.read, b"b2")
        assert b"COMPRESS=DEFLATE" not in capability[0] and capability[1].startswith(b"b2 OK")
        login = wire.read_response(client.readline, client.read, b"b3")
        assert login[-1].startswith(b"b3 OK [CAPABILITY IMAP4rev1 ")
        # still compressed (the wrapper inflates every read): a second COMPRESS is refused
        assert _command(client, b"b4", b"COMPRESS DEFLATE") == [
            b"b4 NO [COMPRESSIONACTIVE] Compression is already active.\r\n"]
        assert b"* 1 EXISTS\r\n" in _command(client, b"b5", b"EXAMINE INBOX")
        client.logout()

    await run(scenario)
