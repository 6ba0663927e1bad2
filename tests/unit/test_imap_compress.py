"""InflatedCopy (proxy/relay/imap_compress.py): bounded slices, the proxy's own stored block
only at a block boundary of the upstream's DEFLATE stream, and what a client's zlib makes of it."""

from __future__ import annotations

import zlib

import pytest

from proxy.relay.imap_compress import InflatedCopy


def deflater():
    return zlib.compressobj(6, zlib.DEFLATED, -15)


def test_a_bomb_comes_out_in_bounded_slices():
    bomb = deflater()
    wire = bomb.compress(b"\0" * (1 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(wire) < 2000
    slices = list(InflatedCopy(4096).slices(wire))
    assert [len(s) for s in slices] == [4096] * 256
    assert b"".join(slices) == b"\0" * (1 << 20)


def test_own_block_only_after_a_sync_flush_and_the_client_reads_it():
    upstream, client = deflater(), zlib.decompressobj(-15)
    copy = InflatedCopy(65536)
    assert copy.at_block_boundary   # before the first compressed byte
    wire = upstream.compress(b"* 1 EXISTS\r\n" * 50) + upstream.flush(zlib.Z_SYNC_FLUSH)
    burst, rest = wire[:len(wire) // 2], wire[len(wire) // 2:]   # a read cut mid-block
    inflated = b"".join(copy.slices(burst))
    assert not copy.at_block_boundary
    assert inflated + b"".join(copy.slices(rest)) == b"* 1 EXISTS\r\n" * 50
    assert copy.at_block_boundary
    bye = copy.own_block(b"* BYE Server shutting down.\r\n")
    assert client.decompress(burst + rest + bye) == (b"* 1 EXISTS\r\n" * 50
                                                     + b"* BYE Server shutting down.\r\n")


def test_bytes_after_the_final_block_are_an_error():
    final = deflater()
    wire = final.compress(b"a NOOP\r\n") + final.flush(zlib.Z_FINISH)
    with pytest.raises(zlib.error):
        list(InflatedCopy(65536).slices(wire + b"b NOOP\r\n"))
    with pytest.raises(zlib.error):
        list(InflatedCopy(65536).slices(b"\xff not DEFLATE at all"))
