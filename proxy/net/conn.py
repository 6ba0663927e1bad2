"""A connection: one trio stream, counted bytes, one writer at a time.

Reads return whatever the kernel has (up to RECEIVE_SIZE) so the relay forwards data as it
arrives, with one send per chunk received (DESIGN.md: what makes a relay fast). A lock makes
concurrent writers (a relay pump and a timeout or drain notice) take turns instead of raising
BusyResourceError. Broken or closed peers read as EOF (b"") and writes to them are dropped.
"""

from __future__ import annotations

import trio

RECEIVE_SIZE = 256 * 1024


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

    async def aclose(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)
