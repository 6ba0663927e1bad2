"""COMPRESS=DEFLATE (RFC 4978) relayed: the compressed bytes pass unchanged, and the relay
inflates a copy of each direction for its parser.

Theory of operation: after the upstream's tagged OK to a client's `COMPRESS DEFLATE`, both
directions are raw DEFLATE streams (RFC 1951, no zlib header; RFC 4978 3). The relay keeps
forwarding every chunk as it arrives, byte for byte, as before; one `InflatedCopy` per
direction turns the same chunk into the plain IMAP the parser needs (command names, tags, IDLE,
literal lengths, metrics). This is what nginx's mail proxy and Dovecot's own proxy do (they
pass COMPRESS through after login), and it is the cheaper choice in CPU: the relay only
inflates, the upstream compresses; terminating COMPRESS would deflate every byte of mail again
in the proxy (bench/README.md, "COMPRESS relayed", has the figures).

Bounded: `slices()` hands out at most `step` inflated bytes at a time (zlib's `max_length`, the
rest of the input waits in `unconsumed_tail`), so a decompression bomb costs no more memory than
plain input; the relay yields between two slices and the parser applies the listener's usual
`max_line` / `max_literal` limits to what comes out (BAD [TOOBIG] and BYE past them).

The proxy's own last words (BYE on drain, timeouts, protocol errors) must reach a client that
inflates the upstream's stream. They are appended as one DEFLATE *stored* block (RFC 1951
3.2.4), which is valid only where the upstream's stream is byte-aligned between blocks: right
after a sync flush (the empty stored block `00 00 FF FF` that ends every burst the upstream
writes; Dovecot flushes with Z_SYNC_FLUSH), or before the first compressed byte. Since the
session closes right after its last words, the client's window never has to match the
upstream's again. Anywhere else the connection just closes, as the relay already does when a
line of its own would split a response.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator

import trio

SYNC_FLUSH = b"\x00\x00\xff\xff"  # the empty stored block ending a Z_SYNC_FLUSH (RFC 1951 3.2.4)


@dataclass
class CompressAsked:
    """A client's COMPRESS waiting for the upstream's verdict (RFC 4978 3): what the client
    sent after it (compressed if the answer is OK) is parsed only once the verdict is known."""

    tag: bytes
    after: bytes
    answered: trio.Event = field(default_factory=trio.Event)
    ok: bool = False


class InflatedCopy:
    """One direction's DEFLATE stream, inflated in bounded slices for the parser."""

    __slots__ = ("step", "_inflate", "_tail", "_slicing")

    def __init__(self, step: int):
        self.step = step
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._tail = SYNC_FLUSH  # nothing compressed yet: a block may start here
        self._slicing = False

    def slices(self, data: bytes) -> Iterator[bytes]:
        """The plain bytes `data` (the next chunk of the stream) inflates to, at most `step`
        at a time. Raises zlib.error on a corrupt stream or bytes after its final block."""
        self._slicing = True
        inflate, source = self._inflate, data
        while True:
            plain = inflate.decompress(source, self.step)
            source = inflate.unconsumed_tail
            if inflate.unused_data:
                raise zlib.error("data after the end of the DEFLATE stream")
            if plain:
                yield plain
            # a full slice may leave output pending in zlib even with no input left
            if not source and len(plain) < self.step:
                break
        self._tail = (self._tail + data)[-4:]
        self._slicing = False

    async def feed(self, data: bytes, parse: Callable[[bytes], Awaitable[bool]]) -> bool:
        """Hand what `data` inflates to to `parse`, a slice at a time, yielding between two
        slices (a bomb never holds the event loop); False as soon as `parse` returns False.
        Raises zlib.error as `slices()` does."""
        for n, plain in enumerate(self.slices(data)):
            if n:
                await trio.lowlevel.checkpoint()
            if not await parse(plain):
                return False
        return True

    @property
    def at_block_boundary(self) -> bool:
        """Every forwarded byte is inflated and the stream ends with a sync flush."""
        return not self._slicing and self._tail == SYNC_FLUSH

    def own_block(self, line: bytes) -> bytes:
        """`line` as a non-final stored block (RFC 1951 3.2.4: header bits 000, padded to the
        byte, LEN and its complement little-endian, then the bytes), for `at_block_boundary`."""
        length = len(line)
        assert length <= 0xFFFF
        return b"\x00" + length.to_bytes(2, "little") + (length ^ 0xFFFF).to_bytes(2, "little") + line
