"""Reading the ALPN offer out of a TLS ClientHello (RFC 8446 4.1.2, RFC 7301 3.1), sans-IO.

Python's ssl module cannot tell "the client offered no ALPN" from "the client offered only
protocols we do not speak" (both end with no protocol selected), and ALPACA (CVE-2021-3618) needs
the difference: the listener records the first handshake bytes and asks this parser.
"""

from __future__ import annotations


class HelloError(ValueError):
    """The bytes are not a well-formed ClientHello."""

    pass


class _Reader:
    """Bounds-checked reads from one TLS structure."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise HelloError("truncated ClientHello")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def vector(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def client_hello_alpn(data: bytes) -> tuple[bytes, ...] | None:
    """The ALPN protocols offered in the TLS records `data` starts with.

    Returns None if more bytes are needed, () if the ClientHello has no ALPN extension; raises
    ValueError if `data` does not start with a well-formed ClientHello (RFC 8446 4.1.2, RFC 7301 3.1).
    """
    return _HelloRecords().feed(data)


class _HelloRecords:
    """The ClientHello put together from its records (RFC 8446 5.1: a handshake message may be
    split across any number of records) as they arrive. Each byte is looked at once: a client
    that sends its hello as tiny records a few at a time costs what it sends, not what it sent
    so far once per read."""

    __slots__ = ("_pending", "_handshake")

    def __init__(self) -> None:
        self._pending = bytearray()    # the start of a record not complete yet
        self._handshake = bytearray()  # the handshake bytes of the complete records

    def feed(self, data: bytes) -> tuple[bytes, ...] | None:
        """As client_hello_alpn, for all the bytes fed so far."""
        pending = self._pending
        pending += data
        pos = 0
        while pos + 5 <= len(pending):
            if pending[pos] != 22:  # ContentType.handshake
                raise HelloError("not a TLS handshake record")
            end = pos + 5 + int.from_bytes(pending[pos + 3:pos + 5], "big")
            if end > len(pending):
                break
            self._handshake += pending[pos + 5:end]
            pos = end
        del pending[:pos]
        handshake = self._handshake
        if len(handshake) < 4:
            return None
        if handshake[0] != 1:  # HandshakeType.client_hello
            raise HelloError("first handshake message is not a ClientHello")
        size = int.from_bytes(handshake[1:4], "big")
        if len(handshake) < 4 + size:
            return None
        return _hello_alpn(_Reader(bytes(handshake[4:4 + size])))


def _hello_alpn(hello: _Reader) -> tuple[bytes, ...]:
    hello.take(2 + 32)              # legacy_version, random
    hello.vector(1)                 # legacy_session_id
    hello.vector(2)                 # cipher_suites
    hello.vector(1)                 # legacy_compression_methods
    if hello.at_end():
        return ()
    extensions = _Reader(hello.vector(2))
    while not extensions.at_end():
        kind = int.from_bytes(extensions.take(2), "big")
        body = extensions.vector(2)
        if kind == 16:              # application_layer_protocol_negotiation
            names = _Reader(_Reader(body).vector(2))
            offered = []
            while not names.at_end():
                offered.append(names.vector(1))
            return tuple(offered)
    return ()


MAX_CLIENT_HELLO = 64 * 1024  # bytes recorded before giving up on reading the ALPN offer


class AlpnOfferReader:
    """The ALPN offer of a ClientHello, from the connection's first bytes as they arrive.

    `offered`: None until the ClientHello is complete, then the offered protocols (() for no ALPN
    extension). `unreadable`: the bytes were not a ClientHello we could read (malformed, larger
    than MAX_CLIENT_HELLO, or the connection ended first). `done` once either is known; later
    bytes are ignored.
    """

    __slots__ = ("offered", "unreadable", "_records", "_received")

    def __init__(self) -> None:
        self.offered: tuple[bytes, ...] | None = None
        self.unreadable = False
        self._records: _HelloRecords | None = _HelloRecords()
        self._received = 0

    @property
    def done(self) -> bool:
        return self.offered is not None or self.unreadable

    def feed(self, data: bytes) -> None:
        """Bytes received from the client; b"" when it closed the connection."""
        if self._records is None:
            return
        self._received += len(data)
        try:
            self.offered = self._records.feed(data)
        except ValueError:
            self.unreadable = True
        if not data or self._received > MAX_CLIENT_HELLO:
            self.unreadable = self.unreadable or self.offered is None
        if self.done:
            self._records = None
