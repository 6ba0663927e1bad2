"""A connection: one trio stream, counted bytes, one writer at a time.

Reads return whatever the kernel has (up to RECEIVE_SIZE) so the relay forwards data as it
arrives, with one send per chunk received (DESIGN.md: what makes a relay fast). A lock makes
concurrent writers (a relay pump and a timeout or drain notice) take turns instead of raising
BusyResourceError. Broken or closed peers read as EOF (b"") and writes to them are dropped.
"""

from __future__ import annotations

import trio

RECEIVE_SIZE = 256 * 1024
CLOSE_NOTIFY_TIMEOUT = 1.0  # seconds to hand the TLS close_notify to the kernel
LINGER_TIMEOUT = 1.0  # seconds to read what a client still sends after the proxy ended it


class Conn:
    __slots__ = ("stream", "bytes_in", "bytes_out", "closed", "_send_lock")

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self._send_lock = trio.Lock()

    async def receive(self) -> bytes:
        """Up to RECEIVE_SIZE bytes; b"" once the peer has closed or the stream broke."""
        if self.closed:
            return b""
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.bytes_in += len(data)
        return data

    async def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Write everything; False (and the connection marked closed) if the peer is gone."""
        if self.closed:
            return False
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                return False
        self.bytes_out += len(data)
        return True

    def replace_stream(self, stream: trio.abc.Stream) -> None:
        """After a STARTTLS handshake: the same connection, now encrypted."""
        self.stream = stream

    async def linger(self, timeout: float = LINGER_TIMEOUT) -> None:
        """Half-close and discard what the peer still sends until it closes (at most `timeout`),
        before aclose(). Closing a socket with unread input makes the kernel send a RST, which
        can destroy the last reply (BYE, -ERR) before the client has read it: the "lingering
        close" of HTTP servers. Plain TCP only (a TLS stream cannot half-close); shielded and
        bounded, so it is safe in a `finally` of a cancelled session."""
        send_eof = getattr(self.stream, "send_eof", None)
        if self.closed or send_eof is None or isinstance(self.stream, trio.SSLStream):
            return
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            try:
                await send_eof()
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError,
                    OSError):
                pass

    async def aclose(self) -> None:
        """Close the connection. A TLS stream first sends its close_notify (a clean end of the
        TLS session, RFC 8446 6.1; OpenSSL 3 peers report "unexpected eof" without it), bounded
        and shielded so that closing never blocks on a peer that does not read."""
        self.closed = True
        if isinstance(self.stream, trio.SSLStream):
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        await trio.aclose_forcefully(self.stream)


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read (after a PROXY header): they are returned
    first, so a TLS handshake or protocol parser sees the stream as the client sent it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes):
        self.transport_stream = stream
        self._prefix = prefix

    @property
    def socket(self):
        return self.transport_stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()
