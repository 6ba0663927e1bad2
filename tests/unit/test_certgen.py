"""proxy.certgen: the generated pair loads into ServerTLS and verifies for every name."""

from __future__ import annotations

import argparse
import ipaddress
import ssl
import stat

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy import certgen
from proxy.config import Address, Certificate, Listener
from proxy.net.tls import ServerTLS, server_handshake
from support.polling import TIMEOUT

NAMES = ["mail.example", "imap.example", "127.0.0.1"]


def test_files_modes_and_extensions(tmp_path):
    cert_path, key_path = certgen.generate(tmp_path / "out", NAMES, days=30)
    assert (cert_path, key_path) == (tmp_path / "out" / "cert.pem", tmp_path / "out" / "key.pem")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["cert.pem", "key.pem"]

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example", "imap.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


async def test_generated_pair_serves_and_verifies_for_each_name(tmp_path):
    cert_path, key_path = certgen.generate(tmp_path, NAMES)
    listener = Listener(name="imaps", protocol="imap", address=Address("127.0.0.1", 0),
                        tls="implicit",
                        certificates=(Certificate(cert=cert_path, key=key_path, names=()),))
    server_tls = ServerTLS(listener)
    client = ssl.create_default_context(cafile=str(cert_path))

    async def handler(stream):
        with trio.fail_after(TIMEOUT):
            tls = await server_handshake(stream, server_tls, "imap")
        await tls.send_all(b"* OK\r\n")
        await tls.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, handler, listeners)
        port = listeners[0].socket.getsockname()[1]
        for name in NAMES:
            tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), client,
                                 server_hostname=name)
            await tls.do_handshake()
            assert await tls.receive_some() == b"* OK\r\n"
            await tls.aclose()
        nursery.cancel_scope.cancel()


def test_existing_files_are_kept_unless_forced(tmp_path):
    cert_path, key_path = certgen.generate(tmp_path, ["a.example"])
    before = cert_path.read_bytes(), key_path.read_bytes()
    with pytest.raises(FileExistsError, match="cert.pem"):
        certgen.generate(tmp_path, ["b.example"])
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before

    cert_path.unlink()  # one file left over is enough to refuse, and nothing is written
    with pytest.raises(FileExistsError, match="key.pem"):
        certgen.generate(tmp_path, ["b.example"])
    assert not cert_path.exists() and key_path.read_bytes() == before[1]

    certgen.generate(tmp_path, ["b.example"], force=True)
    assert key_path.read_bytes() != before[1]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("names", [[], ["bad name"], [""]])
def test_bad_names(tmp_path, names):
    with pytest.raises(ValueError):
        certgen.generate(tmp_path, names)
    assert list(tmp_path.iterdir()) == []


def _parse(argv):
    parser = argparse.ArgumentParser(prog="mailproxy")
    certgen.add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli(tmp_path, capsys):
    args = _parse(["gen-cert", "--out", str(tmp_path), "--name", "mail.example",
                   "--name", "::1"])
    assert args.command == "gen-cert"
    assert certgen.run_cli(args) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "cert.pem"),
                                               str(tmp_path / "key.pem")]
    assert certgen.run_cli(args) == 1
    assert "--force" in capsys.readouterr().err
    assert certgen.run_cli(_parse(["gen-cert", "--out", str(tmp_path), "--name", "x.example",
                                   "--force"])) == 0
