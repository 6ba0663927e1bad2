"""ALPACA (CVE-2021-3618) enforcement for the TLS listeners: which ALPN protocols a client offered.

Theory of operation: OpenSSL, through CPython's ALPN callback, answers a client whose ALPN offer
does not contain our protocol with "no ALPN", which looks exactly like a client that offered
nothing. So `net.tls.server_handshake` puts a `HelloRecorder` between the raw stream and the
SSLStream: it copies the plaintext ClientHello as it passes and reads the offer from it
(`client_hello.client_hello_alpn`). `check_alpn` then refuses "offered something, got nothing",
and a ClientHello that cannot be read (fail closed). See the net.tls module docstring.
"""

from __future__ import annotations

import ssl

import trio

from .client_hello import client_hello_alpn

__all__ = ["HelloRecorder", "check_alpn"]

MAX_CLIENT_HELLO = 64 * 1024  # bytes recorded before giving up on reading the ALPN offer


class HelloRecorder(trio.abc.Stream):
    """Pass-through transport that reads the client's ALPN offer from the bytes going by.

    `alpn_offered`: None until the ClientHello is complete, then the offered protocols (() for no
    ALPN extension). `hello_error`: True if the ClientHello could not be read (malformed, too big).
    After that it only forwards. `transport_stream` is the wrapped stream.
    """

    def __init__(self, transport_stream: trio.abc.Stream):
        self.transport_stream = transport_stream
        self.alpn_offered: tuple[bytes, ...] | None = None
        self.hello_error = False
        self._buffer: bytearray | None = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport_stream.receive_some(max_bytes)
        if self._buffer is not None:
            self._record(data)
        return data

    def _record(self, data: bytes | bytearray) -> None:
        assert self._buffer is not None
        self._buffer += data
        try:
            self.alpn_offered = client_hello_alpn(bytes(self._buffer))
        except ValueError:
            self.hello_error = True
        if not data or len(self._buffer) > MAX_CLIENT_HELLO:
            self.hello_error = self.hello_error or self.alpn_offered is None
        if self.alpn_offered is not None or self.hello_error:
            self._buffer = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


def check_alpn(tls: "trio.SSLStream[trio.abc.Stream] | ssl.SSLObject", protocol: str,
               offered: tuple[bytes, ...] | None = None) -> bool:
    """ALPACA check after a server handshake: may this connection speak `protocol`?

    True if the negotiated ALPN protocol is `protocol`, or if none was negotiated and the client
    offered none. `offered` (the client's ALPN list) is taken from the stream when it was made by
    `server_handshake`; when it is unknown, "none negotiated" is accepted (OpenSSL cannot tell a
    mismatched offer from no offer; see the module docstring).
    """
    selected = tls.selected_alpn_protocol()
    if selected is not None:
        return selected == protocol
    recorder = getattr(tls, "transport_stream", None)
    if offered is None and isinstance(recorder, HelloRecorder):
        if recorder.hello_error:
            return False
        offered = recorder.alpn_offered
    return not offered
