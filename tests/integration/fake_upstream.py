"""A tiny scripted IMAP/POP3 server for the TLS tests that a real Dovecot cannot play: an upstream
that injects a response after its STARTTLS/STLS OK, and one that greets with PREAUTH.

`FakeUpstream(script)` listens on 127.0.0.1 (a free port, `.port`) in a daemon thread and runs
`script(conn)` for each connection, one connection at a time. `conn` is a `FakeConn`: `send(bytes)`,
`readline()` (b"" at EOF) and `rest()` (everything until the peer closes, bounded by a timeout).
The proxy's upstream health check also connects (it reads the greeting and closes): scripts end
quietly on that EOF.
What each connection received is kept in `.received` (one bytes object per connection, appended
when the connection ends), so a test can check what the proxy sent, e.g. that it never started a
TLS handshake (a ClientHello starts with byte 0x16).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Callable

TIMEOUT = 10.0


class FakeConn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.file = sock.makefile("rb")
        self.log = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        line = self.file.readline(65536)
        self.log += line
        return line

    def rest(self) -> bytes:
        """Everything the peer sends until it closes (or TIMEOUT passes)."""
        data = bytearray()
        try:
            while True:
                chunk = self.file.read1(65536)
                if not chunk:
                    break
                data += chunk
        except (OSError, ValueError):
            pass
        self.log += data
        return bytes(data)


class FakeUpstream:
    def __init__(self, script: Callable[[FakeConn], None]):
        self.script = script
        self.received: list[bytes] = []
        self.errors: list[BaseException] = []
        self.connections = threading.Semaphore(0)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            conn = FakeConn(sock)
            try:
                self.script(conn)
            except ConnectionError:
                pass  # the peer went away: what it sent is in conn.log
            except Exception as exc:  # noqa: BLE001 - reported to the test through .errors
                self.errors.append(exc)
            finally:
                self.received.append(bytes(conn.log))
                conn.file.close()   # the makefile() reader holds the socket open too
                sock.close()
                self.connections.release()

    def wait_connection(self, timeout: float = TIMEOUT) -> bytes:
        """What the next finished connection received."""
        assert self.connections.acquire(timeout=timeout), "no connection reached the fake upstream"
        assert not self.errors, self.errors
        return self.received[-1]

    def close(self) -> None:
        """Stop listening. A close alone leaves the thread blocked in accept() holding the
        socket open: the port kept accepting connections for the old script, and a later fake
        could bind the same port (SO_REUSEADDR), so that its sessions met this script."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the accept
        self._sock.close()


# --------------------------------------------------------------------------- scripts


def imap_injects_after_starttls(conn: FakeConn) -> None:
    """OK to STARTTLS with an injected response in the same packet, then wait for the close."""
    conn.send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] fake ready\r\n")
    line = conn.readline()
    if not line:  # the proxy's health check reads the greeting and closes
        return
    tag = line.split(b" ", 1)[0]
    assert line == tag + b" STARTTLS\r\n", line
    conn.send(tag + b" OK Begin TLS negotiation now.\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] "
              b"injected\r\n")
    conn.rest()


def pop3_injects_after_stls(conn: FakeConn) -> None:
    conn.send(b"+OK fake ready\r\n")
    line = conn.readline()
    if not line:  # the proxy's health check reads the greeting and closes
        return
    assert line == b"CAPA\r\n"
    conn.send(b"+OK\r\nSTLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
    assert conn.readline() == b"STLS\r\n"
    conn.send(b"+OK Begin TLS negotiation now.\r\n+OK injected\r\n")
    conn.rest()


def imap_preauth(conn: FakeConn) -> None:
    conn.send(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] logged in as admin\r\n")
    conn.rest()


def imap_login_literals(conn: FakeConn) -> None:
    """An upstream offering neither AUTH=PLAIN nor LITERAL+: the proxy must use LOGIN, with a
    synchronizing literal for a password that cannot be a quoted string (RFC 3501 4.3)."""
    conn.send(b"* OK [CAPABILITY IMAP4rev1 IDLE] fake ready\r\n")
    line = conn.readline()
    if not line:  # the health check
        return
    assert line.endswith(b"}\r\n") and b" LOGIN " in line, line
    tag = line.split(b" ", 1)[0]
    size = int(line[line.rindex(b"{") + 1:-3])
    conn.send(b"+ go ahead\r\n")
    password = conn.file.read(size)
    conn.log += password
    assert conn.readline() == b"\r\n"
    ok = password == "pä\"ss".encode()
    conn.send(tag + (b" OK [CAPABILITY IMAP4rev1 IDLE] in\r\n" if ok else b" NO nope\r\n"))
    line = conn.readline()
    if line:
        conn.send(line.split(b" ", 1)[0] + b" OK noop\r\n")
    conn.rest()


def imap_logged_in(conn: FakeConn) -> bool:
    """Greets (LITERAL+) and answers the proxy's login OK; False for a health check (no login)."""
    conn.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR LITERAL+] fake ready\r\n")
    line = conn.readline()
    if not line:  # the health check
        return False
    conn.send(line.split(b" ", 1)[0] + b" OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n")
    return True


def imap_mute_after_login(conn: FakeConn) -> None:
    """Logs the proxy in, answers one NOOP, then reads commands and never answers them."""
    if not imap_logged_in(conn):
        return
    line = conn.readline()
    conn.send(line.split(b" ", 1)[0] + b" OK noop\r\n")
    conn.rest()
