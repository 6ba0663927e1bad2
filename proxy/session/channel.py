"""A Channel: one connection plus the sans-IO parser that reads it.

Theory of operation: every reader of a peer in the proxy (the pre-login fronts, both relays'
pumps, the IMAP and POP3 upstream dialogues, the gateway's POP3 client and its IMAP session)
does the same thing: ask the parser for the next event, and when it needs data, receive a chunk
and feed it. `next_event()` is that loop, written once. It has no error policy and no clock:

- the parser's ProtocolError propagates; what a protocol error means (a reply and go on, a BYE,
  an UpstreamError) is decided by the caller, which knows whom it talks to;
- end of stream is the parser's ConnectionClosed event (a broken or reset connection reads as
  end of stream, proxy.net.conn);
- timeouts are trio cancel scopes at the call site (`with trio.move_on_after(...)`).

The relay's pumps use `receive()` (one chunk, not fed) and `feed()`, then drain the parser without
I/O (`parser.next_event()` until NEED_DATA) on their hot path: upstream -> client forwards the chunk
before parsing it (DESIGN.md: parsing never delays a byte); client -> upstream forwards what the
parser accepted, holding only an incomplete line (proxy.relay.held_lines).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Generic, Protocol, TypeVar

from ..net.conn import Conn

__all__ = ["Channel", "Parser"]


class Parser(Protocol):
    """What proxy.imap and proxy.pop3 parsers have in common."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> object: ...


P = TypeVar("P", bound=Parser)


class Channel(Generic[P]):
    """`conn` and `parser` are public: STARTTLS replaces the parser, and the relay reads both.
    `need_data` is the parser's NEED_DATA sentinel (proxy.imap and proxy.pop3 each have one)."""

    __slots__ = ("conn", "parser", "need_data")

    def __init__(self, conn: Conn, parser: P, need_data: object, unconsumed: bytes = b""):
        self.conn = conn
        self.parser = parser
        self.need_data = need_data
        if unconsumed:  # bytes read by an earlier reader of this connection (b"" would be EOF)
            parser.receive_data(unconsumed)

    async def next_event(self) -> object:
        """The parser's next event, receiving as many chunks as that takes. Raises the
        parser's ProtocolError; at end of stream the parser returns ConnectionClosed."""
        parser = self.parser
        while True:
            event = parser.next_event()
            if event is not self.need_data:
                return event
            parser.receive_data(await self.conn.receive())

    def receive(self) -> Awaitable[bytes]:
        """One chunk as it arrived (b"" at end of stream), not yet fed to the parser. The
        conn's own coroutine, not one wrapping it: a relay waits here in both directions for
        all of an idle session's life, and each suspended frame costs ~230 bytes."""
        return self.conn.receive()

    def feed(self, data: bytes) -> None:
        """Hand a chunk from `receive()` to the parser (b"" means end of stream)."""
        self.parser.receive_data(data)

    async def send(self, data: bytes) -> bool:
        """Write `data`; False when the peer is gone."""
        return await self.conn.send(data)
