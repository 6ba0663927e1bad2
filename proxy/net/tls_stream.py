"""TLS over a trio stream, driving net/tls_engine.py's sans-IO TLSEngine from the raw socket
(net/raw_io.py), so a TLS read or write costs the system call and the crypto, not trio's generic
stream machinery. Made by net/tls.py (server_handshake / client_handshake); a relay loop of its
own (relay/engine.py) can take the TLS session over after the login (`detachable_fd`).
"""

from __future__ import annotations

import os
import ssl

import trio

from .raw_io import RECEIVE_SIZE, PrefixedStream, RawSocket, plain_socket_fd
from .tls_engine import TLSEngine

__all__ = ["TLSStream"]


class TLSStream(trio.abc.Stream, RawSocket):
    """TLS over a trio stream: a sans-IO TLSEngine driven from the raw socket when the transport
    is a plain TCP stream (non-blocking reads as large as Conn's fast path, one write per batch
    of records, a checkpoint every CHECKPOINT_EVERY operations), else through the transport's
    own stream API. Made by net.tls.server_handshake / client_handshake, which run
    `do_handshake`.

    Errors: a TLS error or a transport failure raises trio.BrokenResourceError (from the
    ssl.SSLError or OSError), a peer's close_notify reads as b"", an EOF without one is broken.
    Writes are serialised (records must reach the socket in the order they were encrypted): a
    writer or a read that has TLS bytes to send (TLS 1.3 tickets, a KeyUpdate answer) waits while
    another task is sending. `aclose` sends our close_notify without waiting for the peer's (the
    caller bounds it: Conn.aclose, CLOSE_NOTIFY_TIMEOUT), then closes the transport.

    A relay loop of its own (outside trio's streams) can take a TLS session over between two
    calls: `engine` (net/tls_engine.py: feed ciphertext, read plaintext, write, data_to_send) and
    the socket `transport_stream` (a trio.SocketStream when the raw path is in use); nothing is
    buffered outside the engine.
    """

    def __init__(self, transport: trio.abc.Stream, engine: TLSEngine):
        prefix = b""
        if isinstance(transport, PrefixedStream):
            prefix, transport = transport.unwrap()
        RawSocket.__init__(self, plain_socket_fd(transport))
        self.transport_stream = transport
        self.engine = engine
        self._flushing = False  # a task is writing the engine's output to the transport
        self._lot: trio.lowlevel.ParkingLot | None = None  # made when a second sender waits
        self._broken = False
        self._closed = False
        if prefix:
            engine.receive_data(prefix)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self.engine.ssl_object

    def detachable_fd(self) -> int | None:
        """The socket's descriptor when another loop may drive `engine` from now on (handshake
        done, not broken or closed, no task writing, a plain TCP transport); None otherwise."""
        if self._fd is None or self._closed or self._broken or self._flushing \
                or not self.engine.handshake_done:
            return None
        return self._fd

    async def do_handshake(self) -> None:
        """Run the handshake to its end. Raises ssl.SSLError (what OpenSSL refused, the alert
        sent to the peer when possible) or trio.BrokenResourceError (the transport failed)."""
        engine = self.engine
        while True:
            try:
                done = engine.handshake()
            except ssl.SSLError:
                self._broken = True
                self._send_alert()
                raise
            if engine.wants_send:
                await self._flush()
            if done:
                return
            await self._fill()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        engine = self.engine
        if not engine.handshake_done:
            await self.do_handshake()
        filled = False
        while True:
            try:
                data = engine.read(max_bytes or RECEIVE_SIZE)
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError("TLS connection broken") from exc
            if engine.wants_send:  # (a post-handshake message asked for an answer)
                await self._flush()
            if data is not None:
                if not filled:
                    await self._maybe_checkpoint()
                return data
            await self._fill()
            filled = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        if self._broken:
            raise trio.BrokenResourceError("TLS connection broken")
        try:
            self.engine.write(data)
        except ssl.SSLError as exc:
            self._broken = True
            raise trio.BrokenResourceError("TLS connection broken") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        if self._fd is not None:
            await trio.lowlevel.wait_writable(self._fd)
        else:
            await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self.engine.handshake_done and not self._broken:
                self.engine.close()
                try:
                    await self._flush()
                except trio.BrokenResourceError:
                    pass
        finally:
            if self._fd is not None:
                assert isinstance(self.transport_stream, trio.SocketStream)
                self._shut = True
                self.transport_stream.socket.close()
            else:
                await self.transport_stream.aclose()

    async def _fill(self) -> None:
        """Read ciphertext (b"" at EOF) into the engine."""
        fd = self._fd
        try:
            if fd is None:
                data = bytes(await self.transport_stream.receive_some(self._size))
            else:
                data = await self._read_raw(fd)
        except OSError as exc:
            self._broken = True
            raise trio.BrokenResourceError("TLS transport failed") from exc
        self.engine.receive_data(data)

    async def _flush(self) -> None:
        """Write everything the engine has to send, in order, one task at a time."""
        while self._flushing:  # the sender ahead of us sends our records too, in order
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()
        if self._broken:
            raise trio.BrokenResourceError("TLS connection broken")
        self._flushing = True
        try:
            while data := self.engine.data_to_send():
                await self._write(data)
        except BaseException as exc:  # cancelled or failed mid-record: the stream is unusable
            self._broken = True
            if isinstance(exc, OSError):
                raise trio.BrokenResourceError("TLS transport failed") from exc
            raise
        finally:
            self._flushing = False
            if self._lot:
                self._lot.unpark_all()

    async def _write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            await self.transport_stream.send_all(data)
        else:
            await self._write_raw(fd, data)

    def _send_alert(self) -> None:
        """After a failed handshake: hand OpenSSL's alert to the kernel if it takes it now."""
        data = self.engine.data_to_send()
        if data and self._fd is not None:
            try:
                os.write(self._fd, data)
            except OSError:
                pass
