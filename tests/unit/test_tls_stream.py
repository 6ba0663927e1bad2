"""proxy.net.conn.TLSStream under Conn, over real loopback sockets, against trio's own SSLStream as
the peer (a different TLS driver, so both directions are checked against an independent one)."""

from __future__ import annotations

import hashlib
import ssl

import pytest
import trio
import trustme

from proxy.net.conn import Conn, PrefixedStream, TLSStream
from proxy.net.tls_engine import TLSEngine
from support.loopback import tcp_stream_pair
from support.polling import TIMEOUT


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mail.example").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


async def tls_pair(server_ctx, client_ctx, server_side_prefix: int = 0
                   ) -> tuple[Conn, trio.SSLStream]:
    """A server Conn over a TLSStream (ours) and a client trio.SSLStream, handshake done.
    `server_side_prefix`: that many first bytes are read before, as after a PROXY header."""
    raw_server, raw_client = await tcp_stream_pair()
    client = trio.SSLStream(raw_client, client_ctx, server_hostname="mail.example")
    transport: trio.abc.Stream = raw_server
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        if server_side_prefix:
            first = b""
            while len(first) < server_side_prefix:
                first += await raw_server.receive_some(server_side_prefix - len(first))
            transport = PrefixedStream(raw_server, first)
        tls = TLSStream(transport, TLSEngine.server(server_ctx))
        await tls.do_handshake()
    return Conn(tls), client


async def test_relay_sized_chunks_both_ways(server_ctx, client_ctx):
    conn, client = await tls_pair(server_ctx, client_ctx)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"a1 NOOP\r\n")
        assert await conn.receive() == b"a1 NOOP\r\n"
        body = hashlib.sha256(b"x").digest() * 100_000  # 3.2 MB, about 200 records
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send, body)
            got = bytearray()
            while len(got) < len(body):
                got += await client.receive_some(1 << 20)
        assert bytes(got) == body
        got.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, body)
            while len(got) < len(body):
                chunk = await conn.receive()
                assert chunk
                got += chunk
        assert bytes(got) == body
        assert conn.bytes_in == len(body) + 9 and conn.bytes_out == len(body)
    await conn.aclose()
    await client.aclose()


async def test_aclose_sends_close_notify(server_ctx, client_ctx):
    conn, client = await tls_pair(server_ctx, client_ctx)
    with trio.fail_after(TIMEOUT):
        assert await conn.send(b"* BYE\r\n")
        await conn.aclose()
        assert await client.receive_some() == b"* BYE\r\n"
        assert await client.receive_some() == b""  # a clean end (without one: BrokenResourceError)
    assert await conn.receive() == b"" and not await conn.send(b"late")
    await client.aclose()


async def test_peers_close_notify_then_abrupt_close(server_ctx, client_ctx):
    conn, client = await tls_pair(server_ctx, client_ctx)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"a1 LOGOUT\r\n")
        await client.aclose()  # close_notify, then TCP close
        assert await conn.receive() == b"a1 LOGOUT\r\n"
        assert await conn.receive() == b"" and conn.eof
    await conn.aclose()

    conn, client = await tls_pair(server_ctx, client_ctx)
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"a1 NOOP\r\n")
        assert await conn.receive() == b"a1 NOOP\r\n"
        await trio.aclose_forcefully(client.transport_stream)  # TCP close, no close_notify
        assert await conn.receive() == b"" and conn.eof  # broken reads as the end
    await conn.aclose()


async def test_handshake_after_already_read_bytes(server_ctx, client_ctx):
    """Bytes read before the handshake (a PROXY header's trailing bytes) are fed in first."""
    conn, client = await tls_pair(server_ctx, client_ctx, server_side_prefix=7)
    assert isinstance(conn.stream, TLSStream)
    assert type(conn.stream.transport_stream) is trio.SocketStream  # the raw-socket path
    with trio.fail_after(TIMEOUT):
        await client.send_all(b"a1 CAPABILITY\r\n")
        assert await conn.receive() == b"a1 CAPABILITY\r\n"
    await conn.aclose()
    await client.aclose()


async def test_concurrent_writers_keep_record_order(server_ctx, client_ctx):
    conn, client = await tls_pair(server_ctx, client_ctx)
    tls = conn.stream
    assert isinstance(tls, TLSStream)
    pieces = [bytes([65 + i]) * 300_000 for i in range(4)]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for piece in pieces:  # each send is larger than the socket buffer: they overlap
                nursery.start_soon(tls.send_all, piece)
            got = bytearray()
            while len(got) < sum(map(len, pieces)):
                got += await client.receive_some(1 << 20)
    runs = [bytes(got[i:i + 300_000]) for i in range(0, len(got), 300_000)]
    assert sorted(runs) == pieces  # whole pieces, none interleaved, every record decrypted
    await conn.aclose()
    await client.aclose()
