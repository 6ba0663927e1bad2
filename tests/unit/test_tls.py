"""proxy.net.tls over real trio TLS on loopback, with trustme CAs (no mocks)."""

from __future__ import annotations

import logging
import ssl
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from proxy import certgen
from proxy.config import Address, Certificate, Listener, ServicePort, Upstream
from proxy.net import client_hello
from proxy.net.client_hello import AlpnOfferReader
from proxy.net.tls import (
    HANDSHAKE_FAILURE_REASONS,
    ServerTLS,
    TLSConfigError,
    TLSHandshakeError,
    UpstreamTLS,
    check_alpn,
    client_context,
    client_handshake,
    client_hello_alpn,
    server_handshake,
)
from support.logrecords import caught
from support.polling import TIMEOUT

GREETING = b"* OK ready\r\n"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


def write_pair(directory: Path, ca: trustme.CA, *identities: str, stem: str = "server",
               names: tuple[str, ...] | None = None) -> Certificate:
    leaf = ca.issue_cert(*identities)
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return Certificate(cert=cert, key=key, names=identities if names is None else names)


def make_listener(*certificates: Certificate, protocol: str = "imap",
                  min_version: str = "1.2") -> Listener:
    return Listener(name="imaps", protocol=protocol, address=Address("127.0.0.1", 0),
                    tls="implicit", certificates=certificates, tls_min_version=min_version)


def trusting(*cas: trustme.CA, check_hostname: bool = True,
             alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for authority in cas:
        authority.configure_trust(ctx)
    ctx.check_hostname = check_hostname
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


@asynccontextmanager
async def serving(handshake):
    """Serve TLS on a loopback port; yields (port, outcomes): one "ok" or failure reason per
    connection. After the handshake the server greets, then echoes."""
    send, outcomes = trio.open_memory_channel(100)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            tls = await handshake(stream)
        except TLSHandshakeError as exc:
            await send.send(exc)
            await trio.aclose_forcefully(stream)
            return
        await send.send("ok")
        try:
            await tls.send_all(GREETING)
            async for data in tls:
                await tls.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(tls)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, handler, listeners)
        yield listeners[0].socket.getsockname()[1], outcomes
        nursery.cancel_scope.cancel()


def serve_tls(server_tls: ServerTLS, protocol: str = "imap"):
    return serving(lambda stream: server_handshake(stream, server_tls, protocol))


async def connect(port: int, ctx: ssl.SSLContext, server_hostname: str | None) -> trio.SSLStream:
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(raw, ctx, server_hostname=server_hostname)
    await tls.do_handshake()
    return tls


async def greeting(tls: trio.SSLStream) -> bytes:
    """The server's first bytes, or b"" if it dropped the connection."""
    try:
        with trio.fail_after(TIMEOUT):
            return await tls.receive_some()
    except trio.BrokenResourceError:
        return b""


def peer_dns_names(tls: trio.SSLStream) -> list[str]:
    return [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]


async def outcome(outcomes) -> str | TLSHandshakeError:
    with trio.fail_after(TIMEOUT):
        return await outcomes.receive()


# --------------------------------------------------------------------------- ServerTLS / SNI


async def test_sni_selects_certificate_by_exact_and_wildcard_name(ca, tmp_path):
    a = write_pair(tmp_path, ca, "a.example", stem="a")
    b = write_pair(tmp_path, ca, "*.b.example", stem="b")
    server_tls = ServerTLS(make_listener(a, b))
    async with serve_tls(server_tls) as (port, _):
        for sni, expected in [("a.example", "a.example"), ("A.Example", "a.example"),
                              ("mail.b.example", "*.b.example"),
                              ("MAIL.B.EXAMPLE", "*.b.example")]:
            tls = await connect(port, trusting(ca), sni)
            assert await greeting(tls) == GREETING
            assert peer_dns_names(tls) == [expected]
            await tls.aclose()


async def test_default_certificate_is_the_first(ca, tmp_path):
    a = write_pair(tmp_path, ca, "a.example", stem="a")
    b = write_pair(tmp_path, ca, "*.b.example", stem="b")
    for order, expected in [((a, b), "a.example"), ((b, a), "*.b.example")]:
        server_tls = ServerTLS(make_listener(*order))
        async with serve_tls(server_tls) as (port, _):
            # unknown name, a wildcard's parent and grandchild, and no SNI at all
            for sni in ["other.example", "b.example", "x.y.b.example", None]:
                tls = await connect(port, trusting(ca, check_hostname=False), sni)
                assert peer_dns_names(tls) == [expected], sni
                await tls.aclose()


def test_names_default_to_certificate_san(ca, tmp_path):
    a = write_pair(tmp_path, ca, "a.example", stem="a")
    b = write_pair(tmp_path, ca, "b.example", "*.c.example", stem="b", names=())
    server_tls = ServerTLS(make_listener(a, b))
    assert server_tls.select("b.example") is not server_tls.context
    assert server_tls.select("x.c.example") is server_tls.select("b.example")
    assert server_tls.select("nope.example") is server_tls.context


async def test_min_version_13_refuses_a_tls12_only_client(ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "a.example"), min_version="1.3"))
    client = trusting(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve_tls(server_tls) as (port, outcomes):
        with pytest.raises(trio.BrokenResourceError):
            await connect(port, client, "a.example")
        failure = await outcome(outcomes)
        assert isinstance(failure, TLSHandshakeError) and failure.reason == "handshake_failed"
        tls = await connect(port, trusting(ca), "a.example")
        assert tls.version() == "TLSv1.3"
        await tls.aclose()


async def test_tls12_client_accepted_by_default(ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "a.example")))
    client = trusting(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve_tls(server_tls) as (port, _):
        tls = await connect(port, client, "a.example")
        assert tls.version() == "TLSv1.2" and await greeting(tls) == GREETING
        await tls.aclose()


# --------------------------------------------------------------------------- ALPN (ALPACA)


@pytest.mark.parametrize("protocol, offer, accepted, selected", [
    ("imap", None, True, None),
    ("imap", ["imap"], True, "imap"),
    ("imap", ["http/1.1", "imap"], True, "imap"),
    ("imap", ["http/1.1"], False, None),
    ("imap", ["pop3"], False, None),
    ("pop3", ["pop3"], True, "pop3"),
    ("pop3", ["imap"], False, None),
])
async def test_alpn(ca, tmp_path, protocol, offer, accepted, selected):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "a.example"), protocol=protocol))
    async with serve_tls(server_tls, protocol) as (port, outcomes):
        try:
            tls = await connect(port, trusting(ca, alpn=offer), "a.example")
            first = await greeting(tls)
        except trio.BrokenResourceError:
            first = b""
        result = await outcome(outcomes)
        if accepted:
            assert result == "ok" and first == GREETING
            assert tls.selected_alpn_protocol() == selected
        else:
            assert isinstance(result, TLSHandshakeError) and result.reason == "alpn_refused"
            assert first == b""
            assert offer[0] in result.detail


def test_check_alpn_without_recorded_offer_accepts_no_alpn():
    class Negotiated:
        def __init__(self, value):
            self.value = value

        def selected_alpn_protocol(self):
            return self.value

    assert check_alpn(Negotiated(None), "imap")
    assert check_alpn(Negotiated("imap"), "imap")
    assert not check_alpn(Negotiated("pop3"), "imap")
    assert not check_alpn(Negotiated(None), "imap", offered=(b"http/1.1",))
    assert check_alpn(Negotiated(None), "imap", offered=())


def _client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    outgoing = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="a.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _refragment(records: bytes, size: int) -> bytes:
    """The same handshake bytes, re-split into records of at most `size` bytes."""
    body = records[5:]
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i:i + size]
        out += bytes([22]) + records[1:3] + len(chunk).to_bytes(2, "big") + chunk
    return out


@pytest.mark.parametrize("alpn, expected", [
    (None, ()), (["imap"], (b"imap",)), (["http/1.1", "imap"], (b"http/1.1", b"imap"))])
def test_client_hello_alpn_parser_at_every_split(alpn, expected):
    for hello in (_client_hello(alpn), _refragment(_client_hello(alpn), 100)):
        for cut in range(len(hello)):
            assert client_hello_alpn(hello[:cut]) is None
        assert client_hello_alpn(hello) == expected
        assert client_hello_alpn(hello + b"\x17\x03\x03") == expected


def test_alpn_offer_reader_looks_at_each_byte_once():
    """A ClientHello sent as one-byte records (RFC 8446 5.1 allows it; OpenSSL accepts it), six
    bytes a read: the reader's work per record stays constant. It used to re-read every record
    received so far at each read: quadratic, ~40 s of CPU for one 48 KB hello. The work is
    counted in executed lines of client_hello.py (no clock): 24 per record now, 1,554 before."""
    body = _client_hello(["imap"])[5:]
    wire = b"".join(b"\x16\x03\x01\x00\x01" + body[i:i + 1] for i in range(len(body)))
    lines = 0

    def trace(frame, event, arg):
        if frame.f_code.co_filename != client_hello.__file__:
            return None

        def count(frame, event, arg):
            nonlocal lines
            lines += event == "line"
            return count
        return count

    reader = AlpnOfferReader()
    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        for i in range(0, len(wire), 6):
            reader.feed(wire[i:i + 6])
    finally:
        sys.settrace(previous)
    assert reader.offered == (b"imap",) and not reader.unreadable
    assert len(body) > 500 and lines <= 40 * len(body)


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
                                 b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03"])
def test_client_hello_alpn_parser_rejects_garbage(bad):
    with pytest.raises(ValueError):
        client_hello_alpn(bad)


async def test_plaintext_client_is_handshake_failure(ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "a.example")))
    async with serve_tls(server_tls) as (port, outcomes):
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        await raw.send_all(b"a001 CAPABILITY\r\n")
        failure = await outcome(outcomes)
        assert isinstance(failure, TLSHandshakeError) and failure.reason == "handshake_failed"
        assert failure.detail
        await raw.aclose()


async def test_server_handshake_is_bounded_by_the_callers_scope(ca, tmp_path, autojump_clock):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "a.example")))
    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.move_on_after(10) as scope:  # a silent client: no timeout of the handshake's own
        await server_handshake(server_end, server_tls, "imap")
    assert scope.cancelled_caught and trio.current_time() == pytest.approx(10)
    assert set(HANDSHAKE_FAILURE_REASONS) == {"handshake_failed", "timeout", "alpn_refused",
                                              "verify_failed"}


# --------------------------------------------------------------------------- reload


async def test_reload_new_files_for_new_connections_existing_stay(ca, other_ca, tmp_path):
    first = write_pair(tmp_path, ca, "mail.example")
    server_tls = ServerTLS(make_listener(first))
    client = trusting(ca, other_ca)
    async with serve_tls(server_tls) as (port, _):
        old = await connect(port, client, "mail.example")
        assert await greeting(old) == GREETING
        old_serial = old.getpeercert()["serialNumber"]

        write_pair(tmp_path, other_ca, "mail.example")  # same paths, new CA and key
        assert server_tls.reload() is None
        new = await connect(port, client, "mail.example")
        new_serial = new.getpeercert()["serialNumber"]
        assert new_serial != old_serial

        first.cert.write_text("garbage\n")
        with pytest.raises(TLSConfigError) as info:
            server_tls.reload()
        assert str(first.cert) in str(info.value)
        after = await connect(port, client, "mail.example")
        assert after.getpeercert()["serialNumber"] == new_serial

        await old.send_all(b"still here\r\n")  # the first connection is untouched
        assert await greeting(old) == b"still here\r\n"
        for tls in (old, new, after):
            await tls.aclose()


async def test_reloaded_certificate_is_signed_by_the_new_ca(ca, other_ca, tmp_path):
    cert = write_pair(tmp_path, ca, "mail.example")
    server_tls = ServerTLS(make_listener(cert))
    write_pair(tmp_path, other_ca, "mail.example")
    server_tls.reload()
    async with serve_tls(server_tls) as (port, _):
        with pytest.raises(trio.BrokenResourceError):
            await connect(port, trusting(ca), "mail.example")
        tls = await connect(port, trusting(other_ca), "mail.example")
        await tls.aclose()


def test_reload_with_a_new_listener_config(ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "a.example", stem="a")))
    b = write_pair(tmp_path, ca, "b.example", stem="b")
    old = server_tls.context
    server_tls.reload(make_listener(b, protocol="pop3"))
    assert server_tls.context is not old and server_tls.protocol == "pop3"


def test_load_errors_name_the_file_and_not_the_key(ca, tmp_path):
    a = write_pair(tmp_path, ca, "a.example", stem="a")
    b = write_pair(tmp_path, ca, "b.example", stem="b")
    missing = Certificate(cert=tmp_path / "missing.crt", key=a.key)
    cases = [
        (missing, str(missing.cert), "No such file"),
        (Certificate(cert=a.cert, key=b.key), str(a.cert), "does not match"),
        (Certificate(cert=a.key, key=a.key), str(a.key), "not a PEM certificate"),
        (Certificate(cert=a.cert, key=a.cert), str(a.cert), "not a PEM private key"),
    ]
    key_text = a.key.read_text()
    for cert, where, why in cases:
        with pytest.raises(TLSConfigError) as info:
            ServerTLS(make_listener(cert))
        message = str(info.value)
        assert where in message and why in message, message
        assert key_text.splitlines()[1] not in message
    with pytest.raises(TLSConfigError):
        ServerTLS(make_listener())


# --------------------------------------------------------------------------- upstream side


def upstream_for(**kwargs) -> Upstream:
    return Upstream(host="127.0.0.1", imap=ServicePort(port=993, tls="implicit"), **kwargs)


def ca_file(tmp_path: Path, ca: trustme.CA, stem: str = "ca") -> Path:
    path = tmp_path / f"{stem}.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def warnings_log():
    with caught(logging.WARNING) as records:
        yield records


async def upstream_attempt(server_tls: ServerTLS, ctx: ssl.SSLContext,
                           server_name: str) -> trio.SSLStream:
    """Connect with client_handshake; a TLSHandshakeError is raised outside the server nursery."""
    failure = None
    async with serve_tls(server_tls) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            with trio.fail_after(TIMEOUT):
                tls = await client_handshake(stream, ctx, server_name)
        except TLSHandshakeError as exc:
            failure = exc
            await trio.aclose_forcefully(stream)
        else:
            assert await greeting(tls) == GREETING
            await tls.aclose()
    if failure is not None:
        raise failure
    return tls


async def test_client_verifies_against_ca_file(ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "mail.example")))
    ctx = client_context(upstream_for(ca_file=ca_file(tmp_path, ca)), "up")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    await upstream_attempt(server_tls, ctx, "mail.example")


async def test_client_unknown_ca_is_verify_failed(ca, other_ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "mail.example")))
    ctx = client_context(upstream_for(ca_file=ca_file(tmp_path, other_ca)), "up")
    with pytest.raises(TLSHandshakeError) as info:
        await upstream_attempt(server_tls, ctx, "mail.example")
    assert info.value.reason == "verify_failed"
    assert "issuer" in info.value.detail


async def test_client_wrong_host_name_is_verify_failed(ca, tmp_path):
    server_tls = ServerTLS(make_listener(write_pair(tmp_path, ca, "mail.example")))
    ctx = client_context(upstream_for(ca_file=ca_file(tmp_path, ca)), "up")
    with pytest.raises(TLSHandshakeError) as info:
        await upstream_attempt(server_tls, ctx, "wrong.example")
    assert info.value.reason == "verify_failed"
    assert "wrong.example" in info.value.detail and "mismatch" in info.value.detail.lower()


async def test_client_verify_false_accepts_self_signed(tmp_path, warnings_log):
    cert, key = certgen.generate(tmp_path, ["mail.example"])
    server_tls = ServerTLS(make_listener(Certificate(cert=cert, key=key)))
    strict = client_context(upstream_for(), "up")
    with pytest.raises(TLSHandshakeError) as info:
        await upstream_attempt(server_tls, strict, "mail.example")
    assert info.value.reason == "verify_failed"
    assert not warnings_log
    loose = client_context(upstream_for(verify=False), "insecure")
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    await upstream_attempt(server_tls, loose, "other.example")
    assert [(r.getMessage(), r.fields) for r in warnings_log] == [
        ("upstream_tls_unverified", {"upstream": "insecure"})]


async def test_client_certificate_presented_when_configured(ca, tmp_path):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mail.example").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def handshake(stream):
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        await tls.do_handshake()
        assert peer_dns_names(tls) == ["client.example"]
        return tls

    client_cert = write_pair(tmp_path, ca, "client.example", stem="client")
    ctx = client_context(upstream_for(ca_file=ca_file(tmp_path, ca), client_cert=client_cert))
    async with serving(handshake) as (port, outcomes):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(TIMEOUT):
            tls = await client_handshake(stream, ctx, "mail.example")
        assert await greeting(tls) == GREETING
        assert await outcome(outcomes) == "ok"
        await tls.aclose()


def test_client_context_bad_files_raise_config_error(ca, tmp_path):
    with pytest.raises(TLSConfigError, match="missing.pem"):
        client_context(upstream_for(ca_file=tmp_path / "missing.pem"))
    bad = Certificate(cert=tmp_path / "nope.crt", key=tmp_path / "nope.key")
    with pytest.raises(TLSConfigError, match="nope.crt"):
        client_context(upstream_for(client_cert=bad))


async def test_client_handshake_is_bounded_by_the_callers_scope(autojump_clock):
    client_end, server_end = trio.testing.memory_stream_pair()
    ctx = ssl.create_default_context()
    with trio.move_on_after(10) as scope:  # a silent server
        await client_handshake(client_end, ctx, "mail.example")
    assert scope.cancelled_caught and trio.current_time() == pytest.approx(10)


def test_upstream_tls_caches_contexts_and_names(ca, tmp_path):
    upstreams = {
        "a": upstream_for(ca_file=ca_file(tmp_path, ca), server_name="mail.example"),
        "b": Upstream(host="b.example", pop3=ServicePort(port=110)),
    }
    tls = UpstreamTLS(upstreams)
    assert tls.context("a") is tls.context("a")
    assert tls.context("b") is tls.context("b")
    assert tls.server_name("a") == "mail.example"
    assert tls.server_name("b") == "b.example"
    with pytest.raises(KeyError):
        tls.context("nope")
    with pytest.raises(TLSConfigError):
        UpstreamTLS({"bad": upstream_for(ca_file=tmp_path / "missing.pem")})
