"""TLS building blocks: listener contexts with SNI and reload, upstream contexts, handshakes.

Theory of operation
-------------------
`ServerTLS(listener)` loads every certificate of a listener into its own `ssl.SSLContext`. The first
one is the default; it carries an SNI callback that switches the connection to the context whose
`names` match the client's server name (exact first, then a `*.domain` wildcard, case-insensitive;
A-labels for IDNs). A certificate without configured `names` answers for the DNS names in its SAN.
All contexts get the same settings, because OpenSSL takes some of them (ALPN) from the switched-to
context and others (versions, options) from the first:

- TLS 1.2 minimum (or 1.3), ECDHE + AEAD ciphers for TLS 1.2, no compression, no renegotiation.
- Session resumption by stateless tickets (`tls_session_tickets`, on by default, as nginx's
  `ssl_session_tickets`): OpenSSL's default two TLS 1.3 tickets after a full handshake (a TLS
  1.2 ticket on request), sealed with a key made with the context, so a client that comes back
  skips the certificate signature (and, in TLS 1.2, the key exchange). The key lives as long as
  the contexts: until the next reload (SIGHUP) or restart, as nginx's without
  `ssl_session_ticket_key`; each worker process has its own (a client resuming on another
  worker gets a full handshake). Off: `OP_NO_TICKET` and no TLS 1.3 ticket at all
  (`num_tickets = 0`), so no resumption; CPython's server contexts never resumed the stateful
  tickets and session IDs OpenSSL offers under `OP_NO_TICKET` (the session cache missed every
  lookup: tests/integration/test_tls_resumption.py), so those would only cost a full
  handshake's worth of tickets and cache entries for nothing.
- Key files are loaded with a password callback that refuses, so an encrypted key is an error
  instead of an interactive prompt on the server's terminal.

`reload()` builds a complete new set of contexts and swaps it in with one assignment; if any file
is bad it raises `TLSConfigError` and the old set stays. Connections take the set current when their
handshake starts; existing connections keep theirs.

ALPACA (CVE-2021-3618): a man in the middle can redirect a client's TLS connection for one protocol
(HTTPS) to our IMAP/POP3 port, which shares the certificate. Each listener announces only its own
ALPN protocol ("imap" or "pop3"), and a connection is refused when the client offered ALPN but none
of its protocols is ours. OpenSSL alone does not do this: CPython's ALPN callback answers a
mismatched offer with "no ALPN" and the handshake succeeds, which looks exactly like a client that
offered nothing. So the server's TLSEngine reads the client's ALPN offer out of the plaintext
ClientHello as it arrives (`client_hello.AlpnOfferReader`); `alpaca.check_alpn` then refuses
"offered something, got nothing". A ClientHello we cannot parse also
refuses the connection (fail closed); OpenSSL would have rejected a really malformed one anyway.

STARTTLS / STLS rule (CVE-2011-0411 class, enforced by the sessions, not here): when a STARTTLS or
STLS command is accepted, any bytes already buffered after the command line (client side) or after
the upstream's OK line (upstream side) were sent in plaintext and could have been injected by an
attacker. They MUST NOT be carried into the TLS session: discard them and refuse/abort the
connection. `server_handshake`/`client_handshake` only ever see the raw stream given to them, so
the caller must check its own read buffer is empty before calling them.

Resource handling: the handshake functions never close the stream they are given; on
`TLSHandshakeError` the caller still owns it and closes it (`trio.aclose_forcefully(stream)`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

import trio
from cryptography import x509

from .. import logs
from ..config import Certificate, Listener, Upstream
from .alpaca import check_alpn
from .client_hello import client_hello_alpn
from .conn import TLSStream
from .tls_engine import TLSEngine

__all__ = [
    "HANDSHAKE_FAILURE_REASONS",
    "HandshakeFailure",
    "ServerTLS",
    "TLSConfigError",
    "TLSHandshakeError",
    "UpstreamTLS",
    "alpn_refusal",
    "check_alpn",
    "client_hello_alpn",
    "client_context",
    "client_handshake",
    "handshake_failure",
    "server_handshake",
]

HandshakeFailure = Literal["handshake_failed", "timeout", "alpn_refused", "verify_failed"]
# Every value of `TLSHandshakeError.reason`, for pre-initialising metric labels.
HANDSHAKE_FAILURE_REASONS: tuple[HandshakeFailure, ...] = (
    "handshake_failed", "timeout", "alpn_refused", "verify_failed")

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites: forward secret and authenticated encryption only (TLS 1.3 suites are all fine).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
_SERVER_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
_SSL_REASONS = {
    "KEY_VALUES_MISMATCH": "the private key does not match the certificate",
    "PEM_LIB": "not valid PEM data",
    "NO_START_LINE": "no PEM data found",
    "EE_KEY_TOO_SMALL": "the key is too small",
    "CA_MD_TOO_WEAK": "the certificate signature algorithm is too weak",
}


class TLSConfigError(Exception):
    """A certificate, key or CA file cannot be used. The message names the file, never its contents."""


class TLSHandshakeError(Exception):
    """A TLS handshake failed.

    `reason` is one of HANDSHAKE_FAILURE_REASONS (bounded: use it as a metric label); `detail` is a
    short human explanation, safe to log.
    """

    def __init__(self, reason: HandshakeFailure, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- loading files


def _refuse_password() -> bytes:
    raise TLSConfigError("encrypted private keys are not supported")


def _load_pair(ctx: ssl.SSLContext, cert: Certificate) -> bytes:
    """Load `cert` into `ctx`; returns the certificate PEM. Raises TLSConfigError naming the file."""
    pem = _read(cert.cert, b"-----BEGIN CERTIFICATE-----", "a PEM certificate")
    _read(cert.key, b"PRIVATE KEY-----", "a PEM private key")
    try:
        ctx.load_cert_chain(cert.cert, cert.key, password=_refuse_password)
    except TLSConfigError as exc:
        raise TLSConfigError(f"{cert.key}: {exc}") from None
    except ssl.SSLError as exc:
        why = _SSL_REASONS.get(exc.reason or "", exc.reason or "unusable")
        raise TLSConfigError(f"cannot load certificate {cert.cert} with key {cert.key}: {why}") from None
    except OSError as exc:
        raise TLSConfigError(f"cannot load certificate {cert.cert} with key {cert.key}: "
                             f"{exc.strerror or exc}") from None
    return pem


def _read(path: Path, marker: bytes, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{path}: {exc.strerror or exc}") from None
    if marker not in data:
        raise TLSConfigError(f"{path}: not {what}")
    return data


def _san_dns_names(pem: bytes) -> tuple[str, ...]:
    """The DNS names in the first certificate's subjectAltName (empty when unreadable)."""
    try:
        leaf = x509.load_pem_x509_certificate(pem)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))


# --------------------------------------------------------------------------- server side


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _name_matches(pattern: str, server_name: str) -> bool:
    """`*.example.com` matches exactly one extra label: `a.example.com`, not `example.com`."""
    if pattern.startswith("*."):
        head, dot, rest = server_name.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return False


class _ContextSet:
    """One generation of listener contexts: [(names, context)], the first being the default."""

    def __init__(self, entries: list[tuple[tuple[str, ...], ssl.SSLContext]]):
        self.entries = entries
        self.default = entries[0][1]
        self.default.sni_callback = self._on_sni

    def select(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        wanted = _normalise(server_name)
        for names, ctx in self.entries:
            if wanted in names:
                return ctx
        for names, ctx in self.entries:
            if any(_name_matches(pattern, wanted) for pattern in names):
                return ctx
        return self.default

    def _on_sni(self, ssl_object: ssl.SSLObject, server_name: str | None,
                _ctx: ssl.SSLContext) -> None:
        chosen = self.select(server_name)
        if chosen is not ssl_object.context:
            ssl_object.context = chosen


class ServerTLS:
    """The TLS contexts of one listener: one per certificate, SNI-selected, reloadable."""

    def __init__(self, listener: Listener):
        self._listener = listener
        self._contexts = self._build(listener)

    @property
    def context(self) -> ssl.SSLContext:
        """The default (first certificate's) context: the one a server TLSEngine starts with."""
        return self._contexts.default

    @property
    def protocol(self) -> str:
        return self._listener.protocol

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context the SNI callback picks for `server_name` (None: the default)."""
        return self._contexts.select(server_name)

    def reload(self, listener: Listener | None = None) -> None:
        """Re-read every file (of `listener` if given, else the current one) and swap atomically.

        Raises TLSConfigError, keeping the old contexts, if anything cannot be loaded. New
        handshakes use the new contexts; established connections are untouched.
        """
        listener = listener or self._listener
        contexts = self._build(listener)
        self._listener, self._contexts = listener, contexts

    @staticmethod
    def _build(listener: Listener) -> _ContextSet:
        if not listener.certificates:
            raise TLSConfigError(f"listener {listener.name!r}: no certificates configured")
        entries = []
        for cert in listener.certificates:
            ctx = _server_context(listener)
            pem = _load_pair(ctx, cert)
            names = tuple(_normalise(n) for n in (cert.names or _san_dns_names(pem)))
            entries.append((names, ctx))
        return _ContextSet(entries)


def _server_context(listener: Listener) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[listener.tls_min_version]
    ctx.options |= _SERVER_OPTIONS
    if not listener.tls_session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.set_alpn_protocols([listener.protocol])
    return ctx


# --------------------------------------------------------------------------- ALPN / ALPACA


async def server_handshake(stream: trio.abc.Stream, server_tls: ServerTLS,
                           protocol: str) -> TLSStream:
    """Run the server side of a TLS handshake on `stream` (implicit TLS, or after STARTTLS/STLS).

    Args:
      stream: the client connection; nothing may be buffered from it (see the STARTTLS rule).
      server_tls: the listener's contexts; protocol: "imap" or "pop3", checked against ALPN.
      No timeout of its own: the caller bounds the handshake with a cancel scope (and counts an
      expiry as the reason "timeout").

    Returns: the TLSStream over `stream` (net/conn.py: a sans-IO TLSEngine on the raw socket).
    Raises: TLSHandshakeError with reason "handshake_failed" or "alpn_refused".
    Resource handling: `stream` is never closed here; on error the caller closes it.
    """
    engine = TLSEngine.server(server_tls.context)
    tls = TLSStream(stream, engine)
    await _handshake(tls)
    refused = alpn_refusal(engine, protocol)
    if refused is not None:
        raise refused
    return tls


def alpn_refusal(engine: TLSEngine, protocol: str) -> TLSHandshakeError | None:
    """After a server handshake: the ALPACA refusal of a client that may not speak `protocol`
    here (an ALPN offer of other protocols only, or an unreadable ClientHello), else None."""
    obj = engine.ssl_object
    unreadable = engine.hello_unreadable and obj.selected_alpn_protocol() is None
    if unreadable or not check_alpn(obj, protocol, engine.alpn_offered):
        offered = b",".join(engine.alpn_offered or ()) or b"unreadable ClientHello"
        return TLSHandshakeError(
            "alpn_refused", f"client offered ALPN {logs.sanitize(offered, 80)}, not {protocol}")
    return None


def handshake_failure(exc: BaseException) -> TLSHandshakeError:
    """The TLSHandshakeError for a handshake that raised `exc` (ssl.SSLError, or the transport's
    failure): verify_failed for a refused certificate, else handshake_failed."""
    verify = _find_cause(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        message = verify.verify_message or verify.reason or "certificate not trusted"
        return TLSHandshakeError("verify_failed", logs.sanitize(
            f"certificate verification failed: {message}"))
    return TLSHandshakeError("handshake_failed", _describe(exc))


_E = TypeVar("_E", bound=BaseException)


async def _handshake(tls: TLSStream) -> None:
    try:
        await tls.do_handshake()
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        raise handshake_failure(exc) from exc


def _find_cause(exc: BaseException, kind: type[_E]) -> _E | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe(exc: BaseException) -> str:
    ssl_error = _find_cause(exc, ssl.SSLError)
    if ssl_error is not None:
        return logs.sanitize(ssl_error.reason or ssl_error.strerror or type(ssl_error).__name__)
    cause: BaseException | None = _find_cause(exc, OSError) or exc.__cause__
    if cause is None:
        return "connection closed during the handshake"
    return logs.sanitize(f"{type(cause).__name__}: {cause}")


# --------------------------------------------------------------------------- upstream side


def client_context(upstream: Upstream, name: str = "", *, warn: bool = True) -> ssl.SSLContext:
    """A client context for connecting to `upstream` (named `name` in logs).

    Verified by default against `ca_file` (only that file) or the system CAs, host name checked,
    TLS 1.2 minimum. `verify: false` disables both checks and logs upstream_tls_unverified
    (callers that build contexts repeatedly pass `warn=False`; UpstreamTLS warns once).
    Raises TLSConfigError naming the file if the CA file or client certificate cannot be loaded.
    """
    cafile = str(upstream.ca_file) if upstream.ca_file else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unusable"
        raise TLSConfigError(f"{upstream.ca_file}: cannot load CA file: {why}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if not upstream.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if warn:
            logs.event("upstream_tls_unverified", logging.WARNING, upstream=name)
    if upstream.client_cert is not None:
        _load_pair(ctx, upstream.client_cert)
    return ctx


class UpstreamTLS:
    """Client contexts for every upstream, built once and cached by upstream name.

    Upstreams with a TLS port are built at construction, so file errors surface at startup (and on
    reload, by building a new UpstreamTLS); plaintext-only ones are built on first use.
    """

    def __init__(self, upstreams: Mapping[str, Upstream]):
        self._upstreams = dict(upstreams)
        self._contexts: dict[str, ssl.SSLContext] = {}
        for name, upstream in self._upstreams.items():
            ports = (upstream.imap, upstream.pop3)
            if any(port is not None and port.tls != "none" for port in ports):
                self.context(name)

    def context(self, name: str) -> ssl.SSLContext:
        """The client context for upstream `name` (KeyError if unknown)."""
        ctx = self._contexts.get(name)
        if ctx is None:
            ctx = self._contexts[name] = client_context(self._upstreams[name], name)
        return ctx

    def server_name(self, name: str) -> str:
        """The name to send as SNI and check the certificate against: server_name, else host."""
        upstream = self._upstreams[name]
        return upstream.server_name or upstream.host


async def client_handshake(stream: trio.abc.Stream, context: ssl.SSLContext,
                           server_name: str) -> TLSStream:
    """Run the client side of a TLS handshake with an upstream on `stream`.

    Args: `server_name` is sent as SNI and checked against the certificate (when the context
    checks host names); an IP address is matched against IP SANs and not sent as SNI.
    Returns: the TLSStream over `stream`.
    Raises: TLSHandshakeError with reason "verify_failed" (unknown CA, wrong host name, expired...)
    or "handshake_failed"; `detail` says why, safe to log. No timeout of its own: the caller's
    cancel scope bounds it.
    Resource handling: `stream` is never closed here; on error the caller closes it.
    """
    tls = TLSStream(stream, TLSEngine.client(context, server_name))
    await _handshake(tls)
    return tls
