"""A connection: one trio stream, counted bytes, one writer at a time.

Theory of operation: reads return whatever the kernel has (up to RECEIVE_SIZE) so the relay
forwards data as it arrives, with one send per chunk received (DESIGN.md: what makes a relay
fast). On a plain TCP stream the socket is used directly: the system call is tried first and
the task only waits (`wait_readable` / `wait_writable`) when it would block, with a scheduler
checkpoint every CHECKPOINT_EVERY operations so a busy session still yields to the others and
still sees cancellation. A read shorter than asked for emptied the socket, so the next receive
waits for readiness first instead of trying a read that would only fail with EAGAIN (two of the
four reads of a relayed command did). trio's own stream methods checkpoint on every call, which is most of
the cost of relaying a small command. TLS is `TLSStream` below: the same raw-socket I/O
driving a sans-IO `tls_engine.TLSEngine` (ssl.SSLObject + memory BIOs), so a TLS read or write
costs the system call and the crypto, not trio's generic stream machinery. Other streams
(COMPRESS, tests' memory streams) go through trio's stream API.

Concurrent writers (a relay pump and a timeout or drain notice) take turns on a parking lot
instead of raising BusyResourceError. Broken or closed peers read as EOF (b"") and writes to
them are dropped.
"""

from __future__ import annotations

import os
import socket
import ssl

import trio

from .tls_engine import TLSEngine

RECEIVE_SIZE = 256 * 1024      # read size of trio streams, and the fast path's smallest
MAX_RECEIVE_SIZE = 1024 * 1024  # the fast path's largest read, reached during bulk transfers
CHECKPOINT_EVERY = 16  # fast-path socket operations between two scheduler checkpoints
CLOSE_NOTIFY_TIMEOUT = 1.0  # seconds to hand the TLS close_notify to the kernel
LINGER_TIMEOUT = 1.0  # seconds to read what a client still sends after the proxy ended it
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Conn:
    __slots__ = ("stream", "bytes_in", "bytes_out", "closed", "eof", "_fd", "_ops", "_sending",
                 "_lot", "_size", "_drained")

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.eof = False  # the peer closed its side
        self._fd = _plain_socket_fd(stream)
        self._ops = 0
        self._sending = False
        self._lot: trio.lowlevel.ParkingLot | None = None  # made when a second writer waits
        self._size = RECEIVE_SIZE
        self._drained = False  # the last fast-path read emptied the socket

    async def receive(self) -> bytes:
        """Up to RECEIVE_SIZE bytes; b"" once the peer has closed or the stream broke."""
        if self.closed:
            return b""
        fd = self._fd
        try:
            if fd is None:
                data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            else:  # the plain-socket fast path, inline: an idle session waits in this frame
                if self._drained:  # nothing to read yet, most likely: wait (also a checkpoint)
                    self._ops = 0
                    await trio.lowlevel.wait_readable(fd)
                else:
                    await self._maybe_checkpoint()
                while True:
                    try:
                        data = os.read(fd, self._size)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(fd)
                self._resize(len(data))
        except _GONE:
            data = b""
        if not data:
            self.eof = True
        self.bytes_in += len(data)
        return data

    def _resize(self, got: int) -> None:
        """Read size follows the traffic: bulk transfers get large reads (fewer system calls
        and sends), small commands small buffers."""
        self._drained = got < self._size
        self._size = _next_read_size(self._size, got)

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
                await self._send_fast(fd, data)
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

    async def _send_fast(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        await self._maybe_checkpoint()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)

    async def _maybe_checkpoint(self) -> None:
        self._ops += 1
        if self._ops >= CHECKPOINT_EVERY:
            self._ops = 0
            await trio.lowlevel.checkpoint()

    def replace_stream(self, stream: trio.abc.Stream) -> None:
        """After a STARTTLS handshake: the same connection, now encrypted."""
        self.stream = stream
        self._fd = _plain_socket_fd(stream)

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
            self.stream.socket.close()
            return
        await trio.aclose_forcefully(self.stream)


def _next_read_size(size: int, got: int) -> int:
    """The fast path's next read size after a read of `size` gave `got` bytes."""
    if got == size and size < MAX_RECEIVE_SIZE:
        return size * 2
    if got < size // 8 and size > RECEIVE_SIZE:
        return size // 2
    return size


def _plain_socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor of a plain trio TCP stream, for the fast path; None otherwise."""
    if type(stream) is trio.SocketStream:
        return stream.socket.fileno()
    return None


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read (after a PROXY header): they are returned
    first, so a TLS handshake or protocol parser sees the stream as the client sent it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes):
        self.transport_stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return bytes(await self.transport_stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.transport_stream, "send_eof", None)  # HalfCloseableStream only
        if send_eof is not None:
            await send_eof()

    def unwrap(self) -> tuple[bytes, trio.abc.Stream]:
        """(the bytes not yet returned, the wrapped stream), for a TLSStream that takes over."""
        prefix, self._prefix = self._prefix, b""
        return prefix, self.transport_stream

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


class TLSStream(trio.abc.Stream):
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
        self.transport_stream = transport
        self.engine = engine
        self._fd = _plain_socket_fd(transport)
        self._ops = 0
        self._size = RECEIVE_SIZE
        self._drained = False  # the last raw read emptied the socket
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
                if self._drained:
                    self._ops = 0
                    await trio.lowlevel.wait_readable(fd)
                else:
                    await self._maybe_checkpoint()
                while True:
                    try:
                        data = os.read(fd, self._size)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(fd)
                self._drained = len(data) < self._size
                self._size = _next_read_size(self._size, len(data))
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
            return
        await self._maybe_checkpoint()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)

    def _send_alert(self) -> None:
        """After a failed handshake: hand OpenSSL's alert to the kernel if it takes it now."""
        data = self.engine.data_to_send()
        if data and self._fd is not None:
            try:
                os.write(self._fd, data)
            except OSError:
                pass

    async def _maybe_checkpoint(self) -> None:
        self._ops += 1
        if self._ops >= CHECKPOINT_EVERY:
            self._ops = 0
            await trio.lowlevel.checkpoint()
