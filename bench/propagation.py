"""Benchmark (issue 8): change propagation latency between sessions of one account. N sessions
SELECT INBOX and IDLE; another session STOREs a flag; the time from sending the STORE to each
IDLE session receiving its untagged FETCH, p50 and p99, for N = 10 and 200 (target p99 < 50 ms).
The gateway runs in-process (SQLite store, Dovecot POP3 upstream); the clients share one thread
(selectors), so their own cost stays small.

Run: .venv/bin/python bench/propagation.py [--sessions 10 200] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import time
from typing import Callable

import trio
from common import Env, make_mailbox  # noqa: E402 (puts tests/ on sys.path)
from inprocess import gateway_listening

from proxy.config import loads
from support.proxyproc import relay_config


def _login(port: int, user: str, password: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = sock.makefile("rb")
    f.readline()
    for tag, command in ((b"a", f'LOGIN "{user}" "{password}"'), (b"b", "SELECT INBOX")):
        sock.sendall(tag + b" " + command.encode() + b"\r\n")
        while not f.readline().startswith(tag + b" "):
            pass
    return sock, f


def measure(port: int, user: str, password: str, sessions: int, rounds: int) -> list[float]:
    return measure_between(port, port, user, password, sessions, rounds)


def measure_between(writer_port: int, idle_port: int, user: str, password: str, sessions: int,
                    rounds: int, rounds_mark: Callable[[], None] | None = None) -> list[float]:
    """Seconds from a STORE sent on `writer_port` to its FETCH on each IDLE session on
    `idle_port` (the same process, or another replica of the gateway). `rounds_mark` is called
    right before the first STORE and after the last round (e.g. to read a process's CPU)."""
    idlers = [_login(idle_port, user, password) for _ in range(sessions)]
    for sock, f in idlers:
        sock.sendall(b"i IDLE\r\n")
        assert f.readline().startswith(b"+")
        sock.setblocking(False)
    writer, wf = _login(writer_port, user, password)
    sel = selectors.DefaultSelector()
    for sock, _ in idlers:
        sel.register(sock, selectors.EVENT_READ)
    samples = []
    if rounds_mark is not None:
        rounds_mark()
    for n in range(rounds):
        op = b"+" if n % 2 == 0 else b"-"
        waiting = {sock for sock, _ in idlers}
        started = time.perf_counter()
        writer.sendall(b"s STORE 1 %sFLAGS (\\Flagged)\r\n" % op)
        buffers: dict = {}
        while waiting:
            for key, _ in sel.select(timeout=5):
                sock = key.fileobj
                data = sock.recv(65536)
                buffers[sock] = buffers.get(sock, b"") + data
                if sock in waiting and b"FETCH" in buffers[sock]:
                    samples.append(time.perf_counter() - started)
                    waiting.discard(sock)
        while not wf.readline().startswith(b"s "):
            pass
    if rounds_mark is not None:
        rounds_mark()
    for sock, _ in idlers:
        sock.close()
    writer.close()
    return samples


async def main(counts: list[int], rounds: int) -> None:
    env = Env("propagation")
    try:
        user, password = env.user_with(make_mailbox(20))
        cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg["listeners"][0]["max_connections_per_ip"] = 1000
        cfg["gateway"] = {"store": str(env.root / "gateway.db"), "poll_interval": "600s"}
        config = loads(json.dumps(cfg))
        async with gateway_listening(config, backlog=1024) as (port, _service):
            print(f"{'sessions':>8} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for count in counts:
                samples = sorted(await trio.to_thread.run_sync(measure, port, user, password,
                                                               count, rounds))
                p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
                print(f"{count:8d} {len(samples):8d} {statistics.median(samples) * 1e3:8.2f} "
                      f"{p99 * 1e3:8.2f} {samples[-1] * 1e3:8.2f}")
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    trio.run(main, args.sessions, args.rounds)
