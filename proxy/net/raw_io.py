"""Raw socket I/O shared by the fast paths: net/conn.py's Conn (plain TCP) and
net/tls_stream.py's TLSStream (ciphertext under TLS).

Theory of operation: reads return whatever the kernel has so the relay forwards data as it
arrives, with one send per chunk received (DESIGN.md: what makes a relay fast). On a plain TCP
socket the descriptor is used directly: the system call is tried first and the task only waits
(`wait_readable` / `wait_writable`) when it would block, with a scheduler checkpoint every
CHECKPOINT_EVERY operations so a busy session still yields to the others and still sees
cancellation. A read shorter than asked for emptied the socket, so the next read waits for
readiness first instead of trying a read that would only fail with EAGAIN (two of the four
reads of a relayed command did). trio's own stream methods checkpoint on every call, which is
most of the cost of relaying a small command.
"""

from __future__ import annotations

import os

import trio

__all__ = ["CHECKPOINT_EVERY", "MAX_RECEIVE_SIZE", "RECEIVE_SIZE", "PrefixedStream", "RawSocket",
           "next_read_size", "plain_socket_fd"]

RECEIVE_SIZE = 256 * 1024      # read size of trio streams, and the fast path's smallest
MAX_RECEIVE_SIZE = 1024 * 1024  # the fast path's largest read, reached during bulk transfers
CHECKPOINT_EVERY = 16  # fast-path socket operations between two scheduler checkpoints


class RawSocket:
    """The fast path's I/O on a non-blocking socket descriptor, for net/conn.py's Conn (plain
    TCP) and net/tls_stream.py's TLSStream (its ciphertext): the system call first, a wait for
    readiness only when it would block, a checkpoint every CHECKPOINT_EVERY operations. The
    read size follows the traffic (bulk transfers get large reads: fewer system calls and
    sends; small commands small buffers), and a read shorter than asked for emptied the
    socket, so the next one waits for readiness first. `_shut` is set when the owner closes
    the descriptor: after every await the descriptor is checked against it before it is used
    again (another task may have closed it meanwhile, and the kernel may have given its number
    to a new socket)."""

    __slots__ = ("_fd", "_ops", "_size", "_drained", "_shut")

    def __init__(self, fd: int | None):
        self._fd = fd  # None: not a plain TCP socket (use the stream's own API)
        self._ops = 0
        self._size = RECEIVE_SIZE
        self._drained = False  # the last read emptied the socket
        self._shut = False

    async def _read_raw(self, fd: int) -> bytes:
        """What the socket has, up to the current read size; b"" at EOF. Raises OSError, and
        trio.ClosedResourceError if the owner closed the descriptor meanwhile."""
        if self._drained:  # nothing to read yet, most likely: wait (also a checkpoint)
            self._ops = 0
            await trio.lowlevel.wait_readable(fd)
        else:
            await self._maybe_checkpoint()
        while True:
            if self._shut:
                raise trio.ClosedResourceError("closed while waiting")
            try:
                data = os.read(fd, self._size)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
        got = len(data)
        self._drained = got < self._size
        self._size = next_read_size(self._size, got)
        return data

    async def _write_raw(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data`. Raises OSError, trio.ClosedResourceError as `_read_raw`."""
        await self._maybe_checkpoint()
        view = memoryview(data)
        while view:
            if self._shut:
                raise trio.ClosedResourceError("closed while waiting")
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)

    async def _maybe_checkpoint(self) -> None:
        self._ops += 1
        if self._ops >= CHECKPOINT_EVERY:
            self._ops = 0
            await trio.lowlevel.checkpoint()


def next_read_size(size: int, got: int) -> int:
    """The fast path's next read size after a read of `size` gave `got` bytes."""
    if got == size and size < MAX_RECEIVE_SIZE:
        return size * 2
    if got < size // 8 and size > RECEIVE_SIZE:
        return size // 2
    return size


def plain_socket_fd(stream: trio.abc.Stream) -> int | None:
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

