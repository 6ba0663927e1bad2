"""Issue 14: 40 connections x 3 bogus LOGINs used to take the gateway from 130 MB to 982 MB of
RSS (a 16 MiB scrypt per attempt). The login cache is an HMAC now (issue 13); this checks the
peak RSS of the gateway (this process: it runs in-process) while they are refused."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import trio

from support.procstatus import reset_peak, vm_bytes

CONNECTIONS, ATTEMPTS = 40, 3


def _bogus(port: int, user: str) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        file = sock.makefile("rb")
        file.readline()
        replies = []
        for n in range(ATTEMPTS):
            sock.sendall(b'b%d LOGIN "%s" "wrong-%d"\r\n' % (n, user.encode(), n))
            while not (line := file.readline()).startswith(b"b%d " % n):
                pass
            replies.append(line.split(b" ", 2)[1])
        return replies


async def test_bogus_logins_do_not_blow_up_rss(gateway):
    reset_peak()
    before = vm_bytes("VmRSS")

    def run():
        with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
            return list(pool.map(lambda _: _bogus(gateway.port, gateway.user), range(CONNECTIONS)))

    replies = await trio.to_thread.run_sync(run)
    peak = vm_bytes("VmHWM")
    print(f"RSS before {before >> 20} MiB, peak during {CONNECTIONS}x{ATTEMPTS} bogus LOGINs "
          f"{peak >> 20} MiB")
    assert replies == [[b"NO"] * ATTEMPTS] * CONNECTIONS
    assert peak - before < 64 * 1024 * 1024, (before, peak)
