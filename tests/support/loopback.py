"""A connected pair of trio TCP streams over loopback, for tests of one stream layer."""

from __future__ import annotations

import trio

__all__ = ["tcp_stream_pair"]


async def tcp_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """(server side, client side) of one real loopback TCP connection (a port-0 listener,
    closed once the connection is accepted)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return server, client
