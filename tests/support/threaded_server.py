"""The accept loop of the tests' small threaded fake servers (a scripted upstream, a fake IMAP
server, a TCP relay in front of Dovecot): a listening socket on a free loopback port whose
connections each run `handle(sock)` in a daemon thread of their own. `handle` owns the socket
(closes it). `close()` stops accepting; connections already handed over run on."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Callable

__all__ = ["ThreadedServer"]

HOST = "127.0.0.1"


class ThreadedServer:
    def __init__(self, handle: Callable[[socket.socket], None], name: str = "fake-server"):
        self._handle, self._name = handle, name
        self._sock = socket.create_server((HOST, 0))
        self.port: int = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:   # closed
                return
            threading.Thread(target=self._handle, args=(conn,), name=self._name,
                             daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the accept (close alone does not)
        self._sock.close()
