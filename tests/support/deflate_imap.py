"""imaplib with RFC 4978 COMPRESS=DEFLATE, as mobile clients use it (shared by the gateway's and
the relay's COMPRESS tests)."""

from __future__ import annotations

import imaplib
import socket
import zlib


class Inflating:
    """The reading side of a compressed imaplib connection: readline() and read(n)."""

    def __init__(self, sock: socket.socket, already: bytes = b""):
        self.sock, self.inflate, self.buf = sock, zlib.decompressobj(-15), b""
        if already:
            self.buf = self.inflate.decompress(already)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += self.inflate.decompress(data)

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._more()
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def close(self) -> None:
        pass


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with RFC 4978 COMPRESS=DEFLATE (what mobile clients turn on)."""

    deflate = None

    def compress(self) -> None:
        tag = self._new_tag()   # imaplib's command table has no COMPRESS: send it ourselves
        self.send(tag + b" COMPRESS DEFLATE\r\n")
        typ, data = self._command_complete("COMPRESS", tag)
        assert typ == "OK", data
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.file = Inflating(self.sock)

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)
