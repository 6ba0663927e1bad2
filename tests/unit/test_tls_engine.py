"""proxy.net.tls_engine: the sans-IO TLS state machine, two engines wired back to back in memory
(real OpenSSL, trustme certificates; no sockets, no trio)."""

from __future__ import annotations

import hashlib
import pathlib
import ssl

import pytest
import trustme

from proxy.net import client_hello, tls_engine
from proxy.net.tls_engine import BIO_SLICE, MAX_RECORD_PLAINTEXT, TLSEngine
from tests.unit.imap.test_sans_io import imported_roots


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA, server_alpn: list[str] | None = None,
             client_alpn: list[str] | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mail.example").configure_cert(server)
    server.options |= ssl.OP_NO_RENEGOTIATION
    if server_alpn:
        server.set_alpn_protocols(server_alpn)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    if client_alpn:
        client.set_alpn_protocols(client_alpn)
    return server, client


def pump(a: TLSEngine, b: TLSEngine) -> None:
    """Move every pending ciphertext byte between the two engines until both are quiet."""
    while a.wants_send or b.wants_send:
        if a.wants_send:
            b.receive_data(a.data_to_send())
        if b.wants_send:
            a.receive_data(b.data_to_send())


def connected(ca: trustme.CA, **alpn) -> tuple[TLSEngine, TLSEngine]:
    server_ctx, client_ctx = contexts(ca, **alpn)
    server, client = TLSEngine.server(server_ctx), TLSEngine.client(client_ctx, "mail.example")
    for _ in range(10):
        client_done, server_done = client.handshake(), server.handshake()
        pump(client, server)
        if client_done and server_done:
            break
    assert client.handshake_done and server.handshake_done
    return server, client


def test_handshake_then_data_both_ways(ca):
    server, client = connected(ca)
    assert server.read(100) is None and client.read(100) is None  # want-read: nothing sent yet
    client.write(b"a1 NOOP\r\n")
    server.receive_data(client.data_to_send())
    assert server.read(1000) == b"a1 NOOP\r\n"
    assert server.read(1000) is None
    server.write(b"a1 OK NOOP completed\r\n")
    client.receive_data(server.data_to_send())
    assert client.read(1000) == b"a1 OK NOOP completed\r\n"
    assert client.ssl_object.version() == "TLSv1.3"


def test_many_records_come_out_as_one_chunk_up_to_max_bytes(ca):
    server, client = connected(ca)
    body = bytes(range(256)) * 1000  # 256,000 bytes: 16 records
    client.write(body)
    wire = client.data_to_send()  # every record in one buffer: one send
    assert len(wire) > len(body)
    server.receive_data(wire)
    first = server.read(100_000)
    assert first is not None and len(first) == 100_000  # several records, one chunk
    rest = server.read(1_000_000)
    assert rest is not None and first + rest == body
    assert server.read(1_000_000) is None


def test_a_record_split_across_reads_waits_for_its_end(ca):
    server, client = connected(ca)
    client.write(b"x" * 1000)
    wire = client.data_to_send()
    for i in range(len(wire) - 1):
        server.receive_data(wire[i:i + 1])
        assert server.read(4096) is None
    server.receive_data(wire[-1:])
    assert server.read(4096) == b"x" * 1000


def test_has_unread_false_means_nothing_to_read_before_more_ciphertext(ca):
    server, client = connected(ca)
    assert not server.has_unread
    client.write(b"a" * 100_000)
    wire = client.data_to_send()
    server.receive_data(wire[:-10])   # whole records, then part of the last one
    assert server.has_unread
    got = server.read(50_000) or b""
    assert len(got) == 50_000
    assert server.has_unread          # whole records left
    got += server.read(1_000_000) or b""
    assert not server.has_unread      # (the last record's start is inside OpenSSL now)
    assert server.read(1_000_000) is None
    server.receive_data(wire[-10:])
    assert server.has_unread
    got += server.read(1_000_000) or b""
    assert got == b"a" * 100_000
    assert not server.has_unread      # all consumed: the engine's read loop stops here


def test_close_notify_reads_as_end(ca):
    server, client = connected(ca)
    client.write(b"last words\r\n")
    client.close()
    server.receive_data(client.data_to_send())
    assert server.read(1000) == b"last words\r\n"  # data before the close_notify first
    assert server.read(1000) == b""
    assert server.read(1000) == b""


def test_eof_without_close_notify_is_an_error_after_the_data(ca):
    server, client = connected(ca)
    client.write(b"cut short\r\n")
    server.receive_data(client.data_to_send())
    server.receive_data(b"")  # the peer closed TCP without a close_notify (truncation attack)
    assert server.read(1000) == b"cut short\r\n"
    with pytest.raises(ssl.SSLEOFError):
        server.read(1000)


def test_garbage_record_breaks_the_connection(ca):
    server, client = connected(ca)
    client.write(b"hello")
    wire = bytearray(client.data_to_send())
    wire[-1] ^= 1  # a flipped bit in the record's tag
    server.receive_data(bytes(wire))
    with pytest.raises(ssl.SSLError):
        server.read(1000)


def test_verification_failure_raises_from_handshake(ca):
    server_ctx, _ = contexts(ca)
    client_ctx = ssl.create_default_context()  # does not trust the test CA
    server, client = TLSEngine.server(server_ctx), TLSEngine.client(client_ctx, "mail.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        for _ in range(10):
            client.handshake()
            server.handshake()
            pump(client, server)


@pytest.mark.parametrize("offer, expected", [
    (None, ()), (["imap"], (b"imap",)), (["http/1.1", "imap"], (b"http/1.1", b"imap"))])
def test_server_reads_the_alpn_offer(ca, offer, expected):
    server, client = connected(ca, server_alpn=["imap"], client_alpn=offer)
    assert server.alpn_offered == expected and not server.hello_unreadable
    assert client.alpn_offered is None  # (client side: not applicable)
    assert server.ssl_object.selected_alpn_protocol() == ("imap" if offer else None)


def test_plaintext_instead_of_a_client_hello(ca):
    server_ctx, _ = contexts(ca)
    server = TLSEngine.server(server_ctx)
    server.receive_data(b"a001 CAPABILITY\r\n")
    assert server.hello_unreadable and server.alpn_offered is None
    with pytest.raises(ssl.SSLError):
        server.handshake()


def test_bulk_both_ways_in_uneven_pieces(ca):
    server, client = connected(ca)
    body = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
    client.write(body[:700_001])
    client.write(body[700_001:])
    wire = client.data_to_send()
    got = bytearray()
    for i in range(0, len(wire), 65_537):
        server.receive_data(wire[i:i + 65_537])
        while (chunk := server.read(MAX_RECORD_PLAINTEXT * 5)) is not None:
            assert chunk
            got += chunk
    assert bytes(got) == body


RECEIVE = 256 * 1024


def test_memory_bios_never_hold_a_whole_large_chunk(ca):
    """OpenSSL's memory BIOs keep their largest size for the connection's life, so the engine
    hands them BIO_SLICE bytes at a time both ways: a session that moved a 1 MB chunk used to
    keep ~1 MB per direction allocated while idle. The data and the EOF after it still arrive
    whole and in order, and the handshake takes a large first flight the same way."""
    server, client = connected(ca)
    body = hashlib.sha256(b"slices").digest() * 40_000  # 1.28 MB
    client.write(body)
    assert client._outgoing.pending <= BIO_SLICE
    wire = client.data_to_send()
    assert len(wire) > len(body) and not client.wants_send
    server.receive_data(wire)
    server.receive_data(b"")  # the peer closed TCP right after, without close_notify
    assert server._incoming.pending <= BIO_SLICE
    got = bytearray()
    with pytest.raises(ssl.SSLEOFError):
        while (chunk := server.read(100_000)) is not None:
            assert server._incoming.pending <= BIO_SLICE
            got += chunk
    assert bytes(got) == body


def test_data_right_after_the_finished_larger_than_a_slice(ca):
    """A TLS 1.3 client writes at once after its Finished: the server's handshake takes what it
    needs from a receive larger than BIO_SLICE and the rest reads as data."""
    server_ctx, client_ctx = contexts(ca)
    server, client = TLSEngine.server(server_ctx), TLSEngine.client(client_ctx, "mail.example")
    assert not client.handshake()
    server.receive_data(client.data_to_send())
    assert not server.handshake()
    client.receive_data(server.data_to_send())
    assert client.handshake()
    body = b"a001 APPEND INBOX {300000+}\r\n" + b"x" * 300_000
    client.write(body)
    wire = client.data_to_send()
    assert len(wire) > 4 * BIO_SLICE
    server.receive_data(wire)
    assert server.handshake()
    got = bytearray()
    while (chunk := server.read(RECEIVE)) is not None:
        got += chunk
    assert bytes(got) == body


def test_engine_and_hello_reader_are_sans_io():
    """The TLS state machine imports ssl and nothing that does I/O (the I/O loop is net/conn.py)."""
    forbidden = {"trio", "socket", "asyncio", "selectors", "__import__", "importlib.import_module"}
    for module in (tls_engine, client_hello):
        path = pathlib.Path(module.__file__ or "")
        bad = imported_roots(path) & forbidden
        assert not bad, f"{path.name} imports {sorted(bad)}"
    assert "trio" in imported_roots(pathlib.Path(__file__).parents[2] / "proxy/net/conn.py")
