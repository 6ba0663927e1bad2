"""A scripted hostile POP3 server: the gateway fetcher's test peer for what real servers do wrong.

Real Dovecot is the upstream of every other test; this small server (RFC 1939 USER/PASS, CAPA,
STAT, LIST, UIDL, RETR, DELE, QUIT on a loopback port, in the test's trio nursery) exists for
what Dovecot never does: a line that never ends, a reply never terminated, a byte a second,
UIDLs that repeat or break RFC 1939 7, sizes that lie, -ERR or a reset in the middle of a
download, a stall after USER.

A misbehaviour is scripted per command (and message number): ``server.script(b"RETR", 2,
drip(...), once=True)``; an action is a coroutine function ``action(stream, default)`` that
talks to the client itself (``default`` is the answer the honest server would have sent) and
returns False to hang up. Without a script, the server answers honestly from `messages` and
`uidls` (one per message, ``id-N`` by default, N its first number; ``uidl=False`` refuses
UIDL).
DELEs take effect at QUIT (RFC 1939 6), and `connections` counts the sessions served.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Awaitable, Callable

import trio

Action = Callable[[trio.SocketStream, bytes], Awaitable[bool]]

__all__ = ["HostilePop3", "drip", "endless_body", "endless_line", "late", "reply", "reset",
           "stall"]


def _stuffed(body: bytes) -> bytes:
    """RFC 1939 3: a body as a multi-line reply's lines, dot-stuffed, with its terminator."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    lines = body.split(b"\r\n")[:-1] if body else []
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


class HostilePop3:
    def __init__(self, messages: list[bytes], user: str, password: str, *,
                 uidls: list[bytes] | None = None, uidl: bool = True,
                 capa: tuple[bytes, ...] = (b"USER", b"UIDL"), sizes: list[int] | None = None):
        self.messages = list(messages)
        self.uidls = list(uidls) if uidls is not None else [
            b"id-%d" % i for i in range(1, len(messages) + 1)]   # kept by a message through DELEs
        self.uidl, self.capa, self.sizes = uidl, capa, sizes
        self.user, self.password = user.encode(), password.encode()
        self.scripts: dict[tuple[bytes, int | None], tuple[Action, bool]] = {}
        self.commands: list[bytes] = []
        self.connections = 0
        self.port = 0

    def script(self, command: bytes, number: int | None, action: Action, *,
               once: bool = False) -> None:
        """Answer `command` (for message `number`, or any) with `action`, once or every time."""
        self.scripts[(command.upper(), number)] = (action, once)

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(functools.partial(
            trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self._session(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass   # the client went away (what a fetcher does when it gives up)
        finally:
            await stream.aclose()

    async def _session(self, stream: trio.SocketStream) -> None:
        buffer, deleted = b"", set[int]()
        if not await self._answer(stream, b"GREETING", None, b"+OK hostile ready\r\n"):
            return
        while True:
            while b"\r\n" not in buffer:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
            line, buffer = buffer.split(b"\r\n", 1)
            name, *args = line.split(b" ")
            name = name.upper()
            self.commands.append(name)
            number = int(args[0]) if args and args[0].isdigit() else None
            default = self._default(name, args, number, deleted)
            if not await self._answer(stream, name, number, default):
                return
            if name == b"QUIT":
                self.messages = [m for i, m in enumerate(self.messages, 1) if i not in deleted]
                self.uidls = [u for i, u in enumerate(self.uidls, 1) if i not in deleted]
                return

    async def _answer(self, stream: trio.SocketStream, name: bytes, number: int | None,
                      default: bytes) -> bool:
        key = (name, number) if (name, number) in self.scripts else (name, None)
        if key not in self.scripts:
            await stream.send_all(default)
            return True
        action, once = self.scripts[key]
        if once:
            del self.scripts[key]
        return await action(stream, default)

    def _size(self, number: int) -> int:
        """What LIST/STAT/RETR claim: the true size, or the lie in `sizes`."""
        return self.sizes[number - 1] if self.sizes else len(self.messages[number - 1])

    def _default(self, name: bytes, args: list[bytes], number: int | None,
                 deleted: set[int]) -> bytes:
        live = [i for i in range(1, len(self.messages) + 1) if i not in deleted]
        size = self._size
        if name == b"CAPA":
            return b"+OK\r\n" + b"".join(c + b"\r\n" for c in self.capa) + b".\r\n"
        if name == b"USER":
            return b"+OK\r\n" if args == [self.user] else b"-ERR [AUTH] no\r\n"
        if name == b"PASS":
            return b"+OK\r\n" if args == [self.password] else b"-ERR [AUTH] no\r\n"
        if name == b"STAT":
            return b"+OK %d %d\r\n" % (len(live), sum(size(i) for i in live))
        if name == b"LIST":
            return b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i, size(i)) for i in live) + b".\r\n"
        if name == b"UIDL" and self.uidl:
            return b"+OK\r\n" + b"".join(b"%d %s\r\n" % (i, self.uidls[i - 1])
                                         for i in live) + b".\r\n"
        if name in (b"RETR", b"DELE") and number in live:
            if name == b"DELE":
                deleted.add(number)
                return b"+OK\r\n"
            return b"+OK %d octets\r\n" % size(number) + _stuffed(self.messages[number - 1])
        if name == b"NOOP":
            return b"+OK\r\n"
        if name == b"QUIT":
            return b"+OK bye\r\n"
        return b"-ERR no such message or command\r\n"


# ---- misbehaviours -------------------------------------------------------------------------------

def reply(data: bytes, *, hang_up: bool = False) -> Action:
    """Answer `data` instead (then hang up, with `hang_up`)."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await stream.send_all(data)
        return not hang_up
    return action


def drip(interval: float, data: bytes | None = None) -> Action:
    """Send `data` (else the honest answer), then bytes of ``x`` for ever, one per `interval`
    seconds: a slowloris server."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        head = default if data is None else data
        await stream.send_all(head[:head.index(b"\r\n") + 2])
        while True:
            await stream.send_all(b"x")
            await trio.sleep(interval)
    return action


def endless_body(line: bytes = b"y" * 1000) -> Action:
    """``+OK`` and then body lines as fast as the client reads them, never the terminator."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await stream.send_all(b"+OK here it comes\r\n")
        chunk = (line + b"\r\n") * 64
        while True:
            await stream.send_all(chunk)
    return action


def endless_line(prefix: bytes = b"+OK ") -> Action:
    """`prefix` and then bytes without CRLF as fast as the client reads them."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await stream.send_all(prefix)
        while True:
            await stream.send_all(b"z" * 4096)
    return action


def late(seconds: float) -> Action:
    """The honest answer, `seconds` late (a slow server, or one answering just under the
    client's timeout each time)."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await trio.sleep(seconds)
        await stream.send_all(default)
        return True
    return action


def stall() -> Action:
    """Never answer (the connection stays open)."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await trio.sleep_forever()
        return False
    return action


def reset(after: int = 0) -> Action:
    """Send the first `after` bytes of the honest answer, then reset the connection (RST)."""
    async def action(stream: trio.SocketStream, default: bytes) -> bool:
        await stream.send_all(default[:after])
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    return action
