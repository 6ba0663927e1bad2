"""ALPACA (CVE-2021-3618) enforcement for the TLS listeners: which ALPN protocols a client offered.

Theory of operation: OpenSSL, through CPython's ALPN callback, answers a client whose ALPN offer
does not contain our protocol with "no ALPN", which looks exactly like a client that offered
nothing. So a server `net.tls_engine.TLSEngine` reads the client's offer out of the plaintext
ClientHello as it arrives (`client_hello.AlpnOfferReader`), and `net.tls.server_handshake` asks
`check_alpn`, which refuses "offered something, got nothing"; a ClientHello that cannot be read
refuses the connection too (fail closed). See the net.tls module docstring.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["check_alpn"]


class _Negotiated(Protocol):
    def selected_alpn_protocol(self) -> str | None: ...


def check_alpn(tls: _Negotiated, protocol: str, offered: tuple[bytes, ...] | None = None) -> bool:
    """ALPACA check after a server handshake: may this connection speak `protocol`?

    True if the negotiated ALPN protocol is `protocol`, or if none was negotiated and the client
    offered none. `offered` is the client's ALPN list; when it is unknown (None), "none
    negotiated" is accepted (OpenSSL cannot tell a mismatched offer from no offer; see the module
    docstring).
    """
    selected = tls.selected_alpn_protocol()
    if selected is not None:
        return selected == protocol
    return not offered
