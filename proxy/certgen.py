"""`mailproxy gen-cert`: a self-signed certificate for testing or a private deployment.

The certificate has an EC P-256 key, a subjectAltName for every name (a DNS name, or an IP address
when the name parses as one), basicConstraints CA:FALSE, the serverAuth extended key usage and the
digitalSignature key usage. Clients trust it by pinning the certificate file itself (for example
`ca_file: cert.pem` on another mailproxy's upstream).

Files are written to a temporary file in the same directory and renamed into place, so a running
proxy reloading them never reads half a file. `key.pem` is created with mode 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["add_cli", "generate", "run_cli"]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
_CLOCK_SKEW = datetime.timedelta(hours=1)  # valid from an hour ago, for clients with slow clocks


def generate(out_dir: Path, names: list[str], *, days: int = 825,
             force: bool = False) -> tuple[Path, Path]:
    """Write `out_dir/cert.pem` and `out_dir/key.pem` for `names`; returns (cert, key) paths.

    Raises ValueError for no names or a bad name, FileExistsError (naming the file) if either
    file exists and `force` is false.
    """
    if not names:
        raise ValueError("at least one name is needed")
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / CERT_FILE, out_dir / KEY_FILE
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to overwrite)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, names, days)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or any(c.isspace() for c in name) or not name.isascii():
        raise ValueError(f"not a DNS name or IP address: {name!r} (use A-labels for IDNs)")
    return x509.DNSName(name.lower())


def _certificate(key: ec.EllipticCurvePrivateKey, names: list[str],
                 days: int) -> x509.Certificate:
    sans = [_san(name) for name in names]
    cn = names[0] if len(names[0]) <= 64 else "mailproxy"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a private temporary file next to `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `gen-cert --out DIR --name HOST [--name HOST...] [--days N] [--force]`."""
    parser = subparsers.add_parser("gen-cert", help="write a self-signed certificate and key")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help=f"directory for {CERT_FILE} and {KEY_FILE}")
    parser.add_argument("--name", required=True, action="append", dest="names", metavar="HOST",
                        help="a DNS name or IP address for the certificate (repeatable)")
    parser.add_argument("--days", type=int, default=825, help="validity in days (default: 825)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run `gen-cert`: print the written paths; errors go to stderr with exit status 1."""
    try:
        paths = generate(args.out, args.names, days=args.days, force=args.force)
    except (ValueError, OSError) as exc:
        print(f"gen-cert: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
