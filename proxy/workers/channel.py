"""The control channel between the supervisor and one worker: a socketpair the worker inherits.

Messages are frames: a 4-byte big-endian length, then a JSON object. The supervisor sends
requests `{"id": N, "op": ...}` and the worker answers `{"id": N, "result": ...}`; the worker
also sends events on its own (`{"event": "ready"}`, `{"event": "final", ...}`). A config travels
as `pickled(config)` (base64 of a pickle) in the supervisor -> worker direction only: the worker
trusts its parent (which chose its program and environment); the supervisor never unpickles
what a worker sends, so a compromised worker cannot run code in the supervisor.
"""

from __future__ import annotations

import base64
import json
import pickle
import socket
import struct
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ..config import Config

MAX_FRAME = 64 * 1024 * 1024   # a metrics snapshot of a busy worker is well under 1 MiB
_HEADER = struct.Struct(">I")


class ChannelClosed(Exception):
    """The peer closed the channel (or sent a frame past MAX_FRAME)."""


def pickled(config: Config) -> str:
    return base64.b64encode(pickle.dumps(config)).decode("ascii")


def unpickled(text: str) -> Config:
    config: Config = pickle.loads(base64.b64decode(text))  # noqa: S301 - from the parent only
    return config


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return _HEADER.pack(len(body)) + body


def read_blocking(sock: socket.socket) -> dict[str, Any]:
    """One message, read before trio runs (the worker's start message)."""
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ChannelClosed
            data += chunk
        return data

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ChannelClosed
    message: dict[str, Any] = json.loads(exactly(size))
    return message


class Channel:
    """One end of the control socketpair, on trio: `send()` from any task (serialised),
    `receive()` from one task."""

    def __init__(self, sock: socket.socket):
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._send_lock = trio.Lock()
        self._buffer = bytearray()

    async def send(self, message: dict[str, Any]) -> None:
        """Raises ChannelClosed when the peer is gone."""
        async with self._send_lock:
            try:
                await self.stream.send_all(encode(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ChannelClosed from None

    async def receive(self) -> dict[str, Any]:
        """The next message. Raises ChannelClosed at EOF, on a frame past MAX_FRAME or one that
        is not a JSON object."""
        size = _HEADER.unpack(await self._exactly(_HEADER.size))[0]
        if size > MAX_FRAME:
            raise ChannelClosed
        try:
            message = json.loads(await self._exactly(size))
        except ValueError:   # a frame cut short by a peer cancelled mid-send
            raise ChannelClosed from None
        if not isinstance(message, dict):
            raise ChannelClosed
        return message

    async def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = await self.stream.receive_some(max(65536, size - len(self._buffer)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                raise ChannelClosed
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
