"""Raw-socket IMAP and POP3 clients for benchmarks: large recv()s, literal bodies counted by length
(IMAP) or scanned for the CRLF.CRLF terminator once per chunk (POP3), so the client is never the
per-line bottleneck that imaplib/poplib would be. Every function takes an optional ssl context
(implicit TLS, a full handshake per connection: no session reuse).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
import zlib

RECV = 1 << 20


class ProtocolFailure(RuntimeError):
    pass


def connect(port: int, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    return sock


def client_tls_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    return ctx


class Reader:
    """A socket with a read buffer (bytes + offset: no quadratic copying)."""

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def _more(self) -> None:
        chunk = self.sock.recv(RECV)
        if not chunk:
            raise ProtocolFailure("connection closed by peer")
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = self.buf[self.pos:i]
                self.pos = i + 2
                return line
            self._more()

    def literal_into(self, n: int, digest) -> None:
        """Consume n bytes into `digest` without keeping them."""
        avail = len(self.buf) - self.pos
        if avail >= n:
            digest.update(memoryview(self.buf)[self.pos:self.pos + n])
            self.pos += n
            return
        digest.update(memoryview(self.buf)[self.pos:])
        remaining = n - avail
        self.buf, self.pos = b"", 0
        while remaining:
            chunk = self.sock.recv(RECV)
            if not chunk:
                raise ProtocolFailure("connection closed in a literal")
            if len(chunk) <= remaining:
                digest.update(chunk)
                remaining -= len(chunk)
            else:
                digest.update(memoryview(chunk)[:remaining])
                self.buf, self.pos = chunk, remaining
                remaining = 0

    def pop3_multiline_into(self, digest) -> int:
        """After a +OK status line: consume the body up to CRLF.CRLF into `digest`; returns its size.
        The body bytes are the wire bytes (dot-stuffed); the bench mailbox has no line starting with "."."""
        size = 0
        search = max(self.pos - 2, 0)  # the status line's CRLF may be the terminator's first CRLF
        start = self.pos
        while True:
            t = self.buf.find(b"\r\n.\r\n", search)
            if t >= 0:
                end = t + 2
                digest.update(memoryview(self.buf)[start:end])
                size += end - start
                self.pos = t + 5
                return size
            safe = len(self.buf) - 4
            if safe > start:
                digest.update(memoryview(self.buf)[start:safe])
                size += safe - start
                start = safe
            keep = min(start, max(safe, search))
            chunk = self.sock.recv(RECV)
            if not chunk:
                raise ProtocolFailure("connection closed in a multi-line response")
            self.buf = self.buf[keep:] + chunk
            start -= keep
            search, self.pos = 0, 0


class DeflateSocket:
    """A socket after COMPRESS=DEFLATE (RFC 4978): raw DEFLATE both ways, each send ended with a
    sync flush; recv() returns inflated bytes (b"" only at the end of the stream). `wire_in`
    counts the compressed bytes received."""

    def __init__(self, sock: socket.socket, level: int = 6):
        self.sock = sock
        self._out = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)
        self.wire_in = 0

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH))

    def recv(self, size: int) -> bytes:
        while True:
            chunk = self.sock.recv(size)
            if not chunk:
                return b""
            self.wire_in += len(chunk)
            plain = self._in.decompress(chunk)
            if plain:
                return plain

    def close(self) -> None:
        self.sock.close()


# -- IMAP ---------------------------------------------------------------------------------------------

def _q(value: str) -> bytes:
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


class Imap:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        self.sock = connect(port, tls)
        self.r = Reader(self.sock)
        greeting = self.r.line()
        if not greeting.startswith(b"* OK"):
            raise ProtocolFailure(f"IMAP greeting {greeting[:100]!r}")
        self.n = 0

    def command(self, text: bytes) -> list[bytes]:
        self.n += 1
        tag = b"a%d" % self.n
        self.sock.sendall(tag + b" " + text + b"\r\n")
        lines = []
        prefix = tag + b" "
        while True:
            line = self.r.line()
            if line.startswith(prefix):
                if line[len(prefix):len(prefix) + 2] != b"OK":
                    raise ProtocolFailure(f"{text[:40]!r} -> {line[:200]!r}")
                return lines
            lines.append(line)

    def login(self, user: str, password: str) -> None:
        self.command(b"LOGIN " + _q(user) + b" " + _q(password))

    def compress(self) -> DeflateSocket:
        """COMPRESS DEFLATE; from its OK on, both directions are compressed (RFC 4978 3)."""
        self.command(b"COMPRESS DEFLATE")
        assert self.r.pos == len(self.r.buf), "bytes after the COMPRESS OK"
        deflated = DeflateSocket(self.sock)  # type: ignore[arg-type]
        self.sock = self.r.sock = deflated  # type: ignore[assignment]
        return deflated

    def noop_rtt_ns(self, count: int) -> list[int]:
        """`count` NOOPs, one at a time; the round trip of each, in ns."""
        sock, r = self.sock, self.r
        out = []
        perf = time.perf_counter_ns
        for i in range(count):
            tag = b"n%d" % i
            t0 = perf()
            sock.sendall(tag + b" NOOP\r\n")
            while True:
                line = r.line()
                if line.startswith(tag + b" "):
                    break
            out.append(perf() - t0)
            if not line.startswith(tag + b" OK"):
                raise ProtocolFailure(f"NOOP -> {line!r}")
        return out

    def fetch_all(self) -> tuple[int, int, str]:
        """`UID FETCH 1:* BODY.PEEK[]`: (messages, literal bytes, sha256 of the literals in order)."""
        digest = hashlib.sha256()
        self.n += 1
        tag = b"f%d " % self.n
        self.sock.sendall(tag + b"UID FETCH 1:* BODY.PEEK[]\r\n")
        r = self.r
        count = total = 0
        while True:
            line = r.line()
            if line.endswith(b"}"):
                n = int(line[line.rindex(b"{") + 1:-1])
                r.literal_into(n, digest)
                count += 1
                total += n
            elif line.startswith(tag):
                if not line[len(tag):].startswith(b"OK"):
                    raise ProtocolFailure(f"FETCH -> {line[:200]!r}")
                return count, total, digest.hexdigest()

    def logout(self) -> None:
        self.command(b"LOGOUT")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def imap_session(port: int, user: str, password: str, tls: ssl.SSLContext | None = None) -> None:
    """One LOGIN + SELECT INBOX + LOGOUT session on a new connection."""
    imap = Imap(port, tls)
    try:
        imap.login(user, password)
        imap.command(b"SELECT INBOX")
        imap.logout()
    finally:
        imap.close()


# -- POP3 ---------------------------------------------------------------------------------------------

class Pop3:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        self.sock = connect(port, tls)
        self.r = Reader(self.sock)
        greeting = self.r.line()
        if not greeting.startswith(b"+OK"):
            raise ProtocolFailure(f"POP3 greeting {greeting[:100]!r}")

    def command(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        line = self.r.line()
        if not line.startswith(b"+OK"):
            raise ProtocolFailure(f"{text.split()[0]!r} -> {line[:200]!r}")
        return line

    def multiline(self, text: bytes, digest) -> int:
        self.command(text)
        return self.r.pop3_multiline_into(digest)

    def login(self, user: str, password: str) -> None:
        self.command(b"USER " + user.encode())
        self.command(b"PASS " + password.encode())

    def quit(self) -> None:
        self.command(b"QUIT")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def pop3_download(port: int, user: str, password: str, tls: ssl.SSLContext | None = None
                  ) -> tuple[int, int, str, float]:
    """USER/PASS, STAT, UIDL, RETR of every message, QUIT: (messages, body bytes, sha256, seconds)."""
    t0 = time.perf_counter()
    pop = Pop3(port, tls)
    try:
        pop.login(user, password)
        count = int(pop.command(b"STAT").split()[1])
        pop.multiline(b"UIDL", hashlib.sha256())
        digest = hashlib.sha256()
        total = 0
        for i in range(1, count + 1):
            total += pop.multiline(b"RETR %d" % i, digest)
        pop.quit()
    finally:
        pop.close()
    return count, total, digest.hexdigest(), time.perf_counter() - t0


def pop3_session(port: int, user: str, password: str, tls: ssl.SSLContext | None = None) -> None:
    """One USER/PASS + STAT + QUIT session on a new connection."""
    pop = Pop3(port, tls)
    try:
        pop.login(user, password)
        pop.command(b"STAT")
        pop.quit()
    finally:
        pop.close()


# -- session rates ------------------------------------------------------------------------------------

def session_rate(session, seconds: float, concurrency: int = 1) -> float:
    """Sessions completed per second by `concurrency` threads each running `session()` in a loop."""
    counts = [0] * concurrency
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        try:
            while time.perf_counter() < deadline[0]:
                session()
                counts[index] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    if concurrency == 1:
        t0 = time.perf_counter()
        end = t0 + seconds
        n = 0
        while time.perf_counter() < end:
            session()
            n += 1
        return n / (time.perf_counter() - t0)
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed
