"""Drain (SIGTERM) reaches gateway IMAP sessions through the process-wide Drain callbacks (no
task per session): a session waiting for a command and one in IDLE get `* BYE Server shutting
down.` at once, then EOF, and the drain's callback set is empty again afterwards. (A client
that connects after the drain began is refused before login, by session/front.py.)"""

from __future__ import annotations

import socket

import trio

from .conftest import message

run = trio.to_thread.run_sync
BYE = b"* BYE Server shutting down.\r\n"


class Client:
    def __init__(self, gateway):
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=20)
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"* OK")
        self.command(f'a LOGIN "{gateway.user}" "{gateway.password}"')

    def command(self, line: str) -> list[bytes]:
        """Send `line` (tag first) and read to its tagged OK."""
        tag = line.split(" ", 1)[0].encode()
        self.sock.sendall(line.encode() + b"\r\n")
        lines = []
        while not (lines and lines[-1].startswith(tag + b" ")):
            lines.append(self.reader.readline())
        assert lines[-1].startswith(tag + b" OK"), lines
        return lines

    def rest(self) -> list[bytes]:
        """Every line until the proxy closes the connection."""
        lines = []
        while line := self.reader.readline():
            lines.append(line)
        self.sock.close()
        return lines


async def test_drain_says_bye_to_waiting_and_idle_sessions(gateway):
    gateway.deliver(message(1))

    def open_sessions() -> tuple[Client, Client]:
        waiting, idle = Client(gateway), Client(gateway)
        waiting.command("b SELECT INBOX")
        idle.command("b SELECT INBOX")
        idle.sock.sendall(b"c IDLE\r\n")
        assert idle.reader.readline() == b"+ idling\r\n"
        return waiting, idle

    waiting, idle = await run(open_sessions)
    drain = gateway.runtime.drain
    assert drain.subscribed() == 2   # one callback per session, no watcher task
    drain.set()
    assert await run(waiting.rest) == [BYE]
    assert await run(idle.rest) == [BYE]
    assert drain.subscribed() == 0
