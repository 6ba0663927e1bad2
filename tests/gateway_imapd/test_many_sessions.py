"""200 concurrent sessions on one account (issue 8) while new mail arrives (upstream POP3 and
APPEND) and flags change: afterwards every session's view equals a fresh SELECT's."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import trio

from support.polling import wait_for

from .conftest import message
from .test_condstore import Raw

SESSIONS = 200


def _view(client: Raw) -> dict[int, set[bytes]]:
    lines, done = client.cmd("UID FETCH 1:* (FLAGS)")
    assert b"OK" in done, done
    out = {}
    for line in lines:
        m = re.match(rb"\* \d+ FETCH \((?:UID (\d+) FLAGS \((.*?)\)|FLAGS \((.*?)\) UID (\d+))\)", line)
        if m:
            uid = int(m.group(1) or m.group(4))
            flags = (m.group(2) if m.group(1) else m.group(3)).split()
            out[uid] = set(flags) - {b"\\Recent"}
    return out


async def test_200_sessions_converge(gateway):
    for n in range(5):
        gateway.deliver(message(n))

    def scenario():
        with ThreadPoolExecutor(max_workers=50) as pool:
            clients = list(pool.map(lambda _: Raw(gateway.port, gateway.user, gateway.password),
                                    range(SESSIONS)))
            list(pool.map(lambda c: c.cmd("SELECT INBOX"), clients))

            def work(i: int):
                c = clients[i]
                if i % 20 == 0:
                    c.cmd(f"UID STORE {1 + i % 5} +FLAGS (\\Flagged $k{i})")
                elif i % 20 == 1:
                    c.cmd(f"UID STORE {1 + i % 5} -FLAGS (\\Flagged)")
                elif i == 7:
                    gateway.deliver(message(100))   # upstream; reaches the store by the poll
                elif i % 50 == 3:
                    c.sock.sendall(b"ap APPEND INBOX {%d+}\r\n" % len(message(200 + i)) +
                                   message(200 + i) + b"\r\n")
                    while not c.file.readline().startswith(b"ap "):
                        pass
                c.cmd("NOOP")
            list(pool.map(work, range(SESSIONS)))
            fresh = Raw(gateway.port, gateway.user, gateway.password)
            fresh.cmd("SELECT INBOX")

            def settled() -> dict[int, set[bytes]] | None:
                fresh.cmd("NOOP")
                view = _view(fresh)
                return view if len(view) == 5 + 1 + 4 else None   # 5 + upstream + 4 APPENDs

            # the upstream message reaches the store at the fetcher's next poll (interval 1 s)
            truth = wait_for(settled, "the upstream message in a fresh session's view")
            views = list(pool.map(lambda c: (c.cmd("NOOP"), _view(c))[1], clients))
            bad = [i for i, v in enumerate(views) if v != truth]
            assert not bad, (bad[:5], views[bad[0]], truth)
            list(pool.map(lambda c: c.close(), clients + [fresh]))
    await trio.to_thread.run_sync(scenario)
