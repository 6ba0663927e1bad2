"""One TLS connection as a sans-IO state machine: an ssl.SSLObject between two memory BIOs.

Theory of operation
-------------------
OpenSSL reads ciphertext from the `incoming` BIO and writes ciphertext to the `outgoing` one; the
caller moves bytes between those and the socket however it likes (trio, epoll, a test). No I/O,
no clock, no trio here: bytes in, bytes out, and the two "wants" tell the I/O loop what to do.

    engine = TLSEngine.server(context)            # or TLSEngine.client(context, "mail.example")
    engine.receive_data(ciphertext)               # what the socket gave; b"" = the peer closed TCP
    engine.handshake() -> bool                    # True once done (then: selected ALPN, version...)
    engine.read(max_bytes) -> bytes | None        # plaintext; None = want-read (feed more); b"" = end
    engine.write(plaintext)                       # encrypted at once into whole records
    engine.data_to_send() -> bytes                # ciphertext to write (b"": nothing), all records
    engine.wants_send                             # want-write: data_to_send() is not empty
    engine.has_unread                             # False: read() gives nothing until fed more
    engine.close()                                # queue our close_notify (RFC 8446 6.1)

`read` and `handshake` raise ssl.SSLError (and its subclasses) when the peer broke the protocol
or closed TCP without a close_notify (SSLEOFError): the connection is then unusable. After
`handshake`, a failed `read` or an attempt at renegotiation (refused by OP_NO_RENEGOTIATION on
the contexts of net/tls.py) raises the same way. After any call, `wants_send` may be true (the
handshake's next flight, TLS 1.3 tickets, a KeyUpdate answer, an alert): the I/O loop sends it, in
order with what `write` queued, before or after its own work.

`read` returns the plaintext of every complete record received, up to `max_bytes`, so one read of
a large socket buffer gives one large chunk (not one per 16 KB record); `write` turns one chunk
into as many records as it needs, which `data_to_send` returns as one buffer: one send per batch.

Memory: OpenSSL's memory BIOs keep the capacity of the most they ever held, for the life of
the connection (a session that once moved a 1 MB chunk kept ~1 MB per direction while idle). So
`receive_data` hands OpenSSL at most BIO_SLICE bytes at a time (the rest waits here, in Python
bytes freed as soon as they are decrypted) and `write` encrypts BIO_SLICE bytes at a time, taking
the ciphertext out after each slice: a BIO never holds much more than BIO_SLICE.

A server engine also reads the ALPN offer out of the client's first bytes (`alpn_offered`,
`hello_unreadable`), because OpenSSL cannot tell "no ALPN" from "no protocol of ours" (ALPACA,
see net/alpaca.py and net/client_hello.py).

net/conn.py's TLSStream drives this on trio (the raw socket, non-blocking) during the handshake
and login; relay/engine.py's epoll loop takes logged-in sessions over and drives it the same way
(requeue: ciphertext it could not send, handed back).
"""

from __future__ import annotations

import ssl
from collections import deque

from .client_hello import AlpnOfferReader

__all__ = ["BIO_SLICE", "MAX_RECORD_PLAINTEXT", "TLSEngine"]

MAX_RECORD_PLAINTEXT = 16384  # RFC 8446 5.1: the most plaintext one record carries
BIO_SLICE = 4 * MAX_RECORD_PLAINTEXT  # the most handed to a memory BIO at once (see Memory)


class TLSEngine:
    """An SSLObject with its two memory BIOs. See the module docstring for the interface."""

    __slots__ = ("ssl_object", "_incoming", "_outgoing", "_hello", "_error", "handshake_done",
                 "_unfed", "_eof_unfed", "_sealed")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                           server_hostname=server_hostname)
        self._hello = AlpnOfferReader() if server_side else None
        self._error: ssl.SSLError | None = None  # raised by the next read (data came first)
        self.handshake_done = False
        self._unfed: deque[memoryview] = deque()  # ciphertext received, not yet in `incoming`
        self._eof_unfed = False  # the peer's EOF, after `_unfed`
        self._sealed: list[bytes] = []  # ciphertext taken out of `outgoing` by `write`

    @classmethod
    def server(cls, context: ssl.SSLContext) -> TLSEngine:
        return cls(context, server_side=True)

    @classmethod
    def client(cls, context: ssl.SSLContext, server_hostname: str | None) -> TLSEngine:
        """`server_hostname` is sent as SNI (not when it is an IP address) and checked against
        the certificate when the context checks host names."""
        return cls(context, server_side=False, server_hostname=server_hostname)

    # ------------------------------------------------------------------ ciphertext in and out

    def receive_data(self, data: bytes) -> None:
        """Ciphertext from the peer; b"" when the peer closed its side of the TCP connection."""
        if self._hello is not None and not self._hello.done:
            self._hello.feed(data)
        if self._unfed or self._eof_unfed or len(data) > BIO_SLICE:
            if data:
                self._unfed.append(memoryview(data))
            else:
                self._eof_unfed = True
            if self._incoming.pending < BIO_SLICE:
                self._feed()
        elif data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def _feed(self) -> bool:
        """Move the next slice of received ciphertext into OpenSSL; False if there is none."""
        unfed = self._unfed
        if not unfed:
            if not self._eof_unfed:
                return False
            self._eof_unfed = False
            self._incoming.write_eof()
            return True
        view = unfed[0]
        self._incoming.write(view[:BIO_SLICE])
        if len(view) > BIO_SLICE:
            unfed[0] = view[BIO_SLICE:]
        else:
            unfed.popleft()
        return True

    def data_to_send(self) -> bytes:
        """Every ciphertext byte waiting to be sent, in order (b"" if none)."""
        if not self._sealed:
            return self._outgoing.read()
        self._sealed.append(self._outgoing.read())
        data = b"".join(self._sealed)
        self._sealed = []
        return data

    def requeue(self, ciphertext: bytes | bytearray | memoryview) -> None:
        """Ciphertext from data_to_send that was not sent: data_to_send gives it first again
        (when another I/O loop hands the connection back with a send half done)."""
        if ciphertext:
            self._sealed.insert(0, bytes(ciphertext))

    @property
    def has_unread(self) -> bool:
        """Ciphertext received that `read` has not taken in yet (maybe not a whole record).
        False: `read` gives nothing before the next `receive_data` (a record's start that
        OpenSSL already took in waits there for the rest)."""
        return bool(self._incoming.pending or self.ssl_object.pending() or self._unfed
                    or self._eof_unfed)

    @property
    def wants_send(self) -> bool:
        return bool(self._sealed) or self._outgoing.pending > 0

    # ------------------------------------------------------------------ the TLS session

    def handshake(self) -> bool:
        """Advance the handshake: True once it is complete, False while it wants more data.
        Raises ssl.SSLError (ssl.SSLCertVerificationError for a refused certificate)."""
        while not self.handshake_done:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                if not self._feed():
                    return False
            else:
                self.handshake_done = True
        return True

    def read(self, max_bytes: int) -> bytes | None:
        """Plaintext of the complete records received, at most `max_bytes` (> 0). None when a
        whole record is still missing (want-read); b"" after the peer's close_notify. Raises
        ssl.SSLError on a broken connection (an EOF without close_notify: ssl.SSLEOFError)."""
        if self._error is not None:
            raise self._error
        obj, incoming = self.ssl_object, self._incoming
        chunks: list[bytes] = []
        room = max_bytes
        while room > 0:
            try:
                chunk = obj.read(min(room, MAX_RECORD_PLAINTEXT))
            except ssl.SSLWantReadError:
                if self._feed():
                    continue
                break
            except ssl.SSLError as exc:
                if not chunks:
                    raise
                self._error = exc  # hand over what came before it first
                break
            if not chunk:  # the peer's close_notify
                if not chunks:
                    return b""
                break
            chunks.append(chunk)
            room -= len(chunk)
            if not incoming.pending and not obj.pending() and not self._unfed \
                    and not self._eof_unfed:
                break  # nothing left to decrypt: skip the SSLWantReadError
        if not chunks:
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt `data` into records now (see data_to_send). Raises ssl.SSLError if the
        connection is broken or closed."""
        if len(data) <= BIO_SLICE:
            if data:
                self.ssl_object.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), BIO_SLICE):
            self.ssl_object.write(view[start:start + BIO_SLICE])
            self._sealed.append(self._outgoing.read())

    def close(self) -> None:
        """Queue our close_notify (sent by the caller through data_to_send). The peer's answer
        is not awaited: RFC 8446 6.1 lets the closing side close at once."""
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # (want-read: the peer's close_notify has not come, which is fine)

    # ------------------------------------------------------------------ ALPACA (server side)

    @property
    def alpn_offered(self) -> tuple[bytes, ...] | None:
        """The ALPN protocols the client offered (() for none); None if unknown (client side, or
        the ClientHello was not complete or not readable)."""
        return self._hello.offered if self._hello is not None else None

    @property
    def hello_unreadable(self) -> bool:
        """True if the client's first bytes were not a ClientHello we could read (fail closed)."""
        return self._hello is not None and self._hello.unreadable
