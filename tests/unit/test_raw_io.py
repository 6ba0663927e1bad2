"""proxy.net.raw_io.RawSocket (Conn's and TLSStream's fast path) over a real loopback socket: a
descriptor closed by another task while the reader waited at a checkpoint is never used again,
even when the kernel has given its number to another descriptor meanwhile."""

from __future__ import annotations

import os

import trio

from proxy.net.conn import Conn
from proxy.net.raw_io import CHECKPOINT_EVERY
from support.loopback import tcp_stream_pair


def test_descriptor_closed_during_a_checkpoint_is_not_read(monkeypatch):
    intruder_r, intruder_w = os.pipe()
    os.write(intruder_w, b"another connection's bytes")

    async def main() -> None:
        server, client = await tcp_stream_pair()
        conn = Conn(server)
        fd = server.socket.fileno()
        real = trio.lowlevel.checkpoint

        async def closing_checkpoint() -> None:
            monkeypatch.setattr(trio.lowlevel, "checkpoint", real)
            await conn.aclose()          # another task ends the connection meanwhile...
            os.dup2(intruder_r, fd)      # ...and its number now names another descriptor
            await real()

        monkeypatch.setattr(trio.lowlevel, "checkpoint", closing_checkpoint)
        conn._ops = CHECKPOINT_EVERY - 1   # the next operation checkpoints first
        try:
            assert await conn.receive() == b""
            assert conn.eof and conn.bytes_in == 0
        finally:
            os.close(fd)
            await client.aclose()

    try:
        trio.run(main)
        assert os.read(intruder_r, 100) == b"another connection's bytes"   # never read
    finally:
        os.close(intruder_r)
        os.close(intruder_w)
