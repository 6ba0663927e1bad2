"""COMPRESS=DEFLATE (RFC 4978) for gateway sessions.

Theory of operation: COMPRESS takes the bytes the parser has buffered but not parsed (the
client compresses right after its command's CRLF, 4978 3, and may already have sent some), and
once the tagged OK has been written (the session calls `after_reply`) wraps the connection's
stream in `DeflateStream`: raw DEFLATE (RFC 1951, no zlib header) both ways, each write
sync-flushed so the client can inflate every response at once.

Inflating is bounded: one `receive_some()` returns at most `max_chunk` inflated bytes and keeps
the rest of its input compressed (zlib's `unconsumed_tail`), so a compression bomb costs no
more memory than plain input; what it inflates to meets the parser's usual line and literal
limits (a line too long is skipped, then the session is closed). A corrupt stream reads as EOF.
"""

from __future__ import annotations

import zlib

import trio

from ._args import Reply, word

MAX_CHUNK = 64 * 1024   # inflated bytes handed to the parser per read
LEVEL = 6


class DeflateStream(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream, unread: bytes = b"", max_chunk: int = MAX_CHUNK):
        self.inner = inner
        self.max_chunk = max_chunk
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._pending = unread
        self._send_lock = trio.StrictFIFOLock()

    @property
    def socket(self):   # for peer-address lookups, as the plain stream has one
        return getattr(self.inner, "socket", None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = min(max_bytes or self.max_chunk, self.max_chunk)
        while True:
            source: bytes | bytearray
            if self._inflate.unconsumed_tail:
                source = self._inflate.unconsumed_tail
            elif self._pending:
                source, self._pending = self._pending, b""
            else:
                source = await self.inner.receive_some()
                if not source:
                    return b""
            try:
                data = self._inflate.decompress(source, limit)
            except zlib.error:
                raise trio.BrokenResourceError("corrupt DEFLATE stream") from None
            if data:
                return data
            if self._inflate.eof:   # the client ended its stream: nothing more can come
                return b""

    async def send_all(self, data) -> None:
        async with self._send_lock:   # compress and write in the same order
            out = self._deflate.compress(bytes(data)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            await self.inner.send_all(out)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def compress(session, cmd):
    if len(cmd.args) != 1:
        raise Reply.bad("COMPRESS expects a mechanism")
    if word(cmd.args[0]) != b"DEFLATE":
        raise Reply.no("Unknown compression mechanism.")
    conn = session.conn
    if isinstance(getattr(conn, "stream", None), DeflateStream):
        raise Reply.no("Compression is already active.", b"COMPRESSIONACTIVE")   # RFC 4978 3
    unread = session.parser.take_unconsumed()

    def start() -> None:
        conn.replace_stream(DeflateStream(conn.stream, unread))

    session.after_reply = start
    return None
