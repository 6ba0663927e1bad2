"""A connection: one trio stream, counted bytes, one writer at a time.

Theory of operation: on a plain TCP stream the socket is used directly (net/raw_io.py: the
system call first, a wait only when it would block, a checkpoint every CHECKPOINT_EVERY
operations, reads sized by the traffic); TLS is net/tls_stream.py's TLSStream, the same
raw-socket I/O driving a sans-IO TLSEngine. Other streams (COMPRESS, tests' memory streams) go
through trio's stream API.

Concurrent writers (a relay pump and a timeout or drain notice) take turns on a parking lot
instead of raising BusyResourceError. Broken or closed peers read as EOF (b"") and writes to
them are dropped.
"""

from __future__ import annotations

import os
import socket

import trio

from .raw_io import CHECKPOINT_EVERY, RECEIVE_SIZE, PrefixedStream, RawSocket, plain_socket_fd
from .tls_stream import TLSStream

__all__ = ["Conn", "PrefixedStream", "TLSStream"]

CLOSE_NOTIFY_TIMEOUT = 1.0  # seconds to hand the TLS close_notify to the kernel
LINGER_TIMEOUT = 1.0  # seconds to read what a client still sends after the proxy ended it
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Conn(RawSocket):
    __slots__ = ("stream", "bytes_in", "bytes_out", "closed", "eof", "_sending", "_lot")

    def __init__(self, stream: trio.abc.Stream, *, fresh: bool = False):
        """`fresh`: a connection just accepted, whose peer waits for the greeting: the first
        receive waits for readiness instead of trying a read that would fail with EAGAIN."""
        super().__init__(plain_socket_fd(stream))
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.eof = False  # the peer closed its side
        self._sending = False
        self._lot: trio.lowlevel.ParkingLot | None = None  # made when a second writer waits
        self._drained = fresh  # (RawSocket's: the last read emptied the socket)

    async def receive(self) -> bytes:
        """Up to RECEIVE_SIZE bytes (more on the fast path during bulk transfers); b"" once the
        peer has closed or the stream broke."""
        if self.closed:
            return b""
        fd = self._fd
        try:
            if fd is None:
                data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            else:  # the plain-socket fast path: an idle session waits in _read_raw
                data = await self._read_raw(fd)
        except _GONE:
            data = b""
        if not data:
            self.eof = True
        self.bytes_in += len(data)
        return data

    async def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Write everything; False (and the connection marked closed) if the peer is gone."""
        while self._sending:  # another writer is mid-send: wait for our turn
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()
        if self.closed:
            return False
        self._sending = True
        fd = self._fd
        try:
            if fd is not None:
                await self._write_raw(fd, data)
            else:
                await self.stream.send_all(data)
        except _GONE:
            self.closed = True
            return False
        finally:
            self._sending = False
            if self._lot:  # (None, or empty: nobody waits)
                self._lot.unpark()
        self.bytes_out += len(data)
        return True

    def replace_stream(self, stream: trio.abc.Stream) -> None:
        """After a STARTTLS handshake: the same connection, now encrypted."""
        self.stream = stream
        self._fd = plain_socket_fd(stream)

    async def linger(self) -> None:
        """Half-close and discard what the peer still sends until it closes (at most
        LINGER_TIMEOUT), before aclose(). Closing a socket with unread input makes the kernel
        send a RST, which can destroy the last reply (BYE, -ERR) before the client has read it:
        the "lingering close" of HTTP servers. Plain TCP only (a TLS stream cannot half-close); shielded and
        bounded, so it is safe in a `finally` of a cancelled session. On a plain socket the
        common case (the client has already closed) costs two system calls and no wait."""
        if self.closed or self.eof or isinstance(self.stream, TLSStream):
            return  # (a peer that already closed has nothing left to send)
        fd = self._fd
        if fd is not None:
            try:
                assert isinstance(self.stream, trio.SocketStream)
                self.stream.socket.shutdown(socket.SHUT_WR)
                for _ in range(CHECKPOINT_EVERY):  # bounded: a peer that floods waits below
                    if not os.read(fd, RECEIVE_SIZE):
                        return  # EOF: the peer had closed
            except BlockingIOError:
                pass  # still open: wait for it below
            except OSError:
                return
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None:
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + LINGER_TIMEOUT):
            try:
                if fd is None:
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
        if isinstance(self.stream, TLSStream):
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            return  # (TLSStream.aclose closes its transport even when cancelled)
        if self._fd is not None:   # no checkpoint needed to close a plain socket
            assert isinstance(self.stream, trio.SocketStream)
            self._shut = True
            self.stream.socket.close()
            return
        await trio.aclose_forcefully(self.stream)
