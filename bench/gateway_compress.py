"""Benchmark: COMPRESS=DEFLATE (RFC 4978) on the gateway, on vs off in one run (issue 17).

One in-process gateway on SQLite serves a mailbox ingested from Dovecot POP3 (bench/common.py's
mix: base64 attachments, which deflate poorly, like real attachments). A client process of its own
(imaplib, or imaplib with the tests' deflate wrapper) runs interleaved rounds, plain then
compressed: `FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)` (text, compresses well) and
`UID FETCH 1:* BODY.PEEK[]`. Per command: the client's MB/s of IMAP payload, the bytes on the wire,
and the gateway's CPU (this process's CPU clock, user+sys of all its threads, which are only the
gateway's: the client runs elsewhere) per MB of payload, for the whole session (login to
logout, so the small ENVELOPE FETCH carries the session's own cost too). The load average is
printed with the numbers: on a shared machine compare the ratios of one run, not absolute figures.

Run: .venv/bin/python bench/gateway_compress.py [--messages 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import imaplib
import json
import multiprocessing
import os
import statistics
import time

import trio
from common import Env, make_mailbox  # noqa: E402 (puts tests/ on sys.path)
from inprocess import gateway_listening, log_in_until_ingested

from proxy.config import loads
from support.deflate_imap import DeflateIMAP4
from support.proxyproc import relay_config

COMMANDS = {"envelope": ("FETCH", "1:*", "(FLAGS UID RFC822.SIZE ENVELOPE)"),
            "body": ("UID", "FETCH", "1:*", "(BODY.PEEK[])")}


def cpu_seconds() -> float:
    """CPU time of this process, every thread, ended ones included (CLOCK_PROCESS_CPUTIME_ID,
    nanosecond resolution; /proc/self/stat counts 10 ms ticks, too coarse for a 0.3 MB FETCH)."""
    return time.process_time()


class _Counting:
    """A socket whose recv() counts the bytes that came over the wire."""

    def __init__(self, sock):
        self.sock, self.received = sock, 0

    def recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        self.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.sock, name)


def measure(port: int, user: str, password: str, compressed: bool, which: str) -> dict[str, float]:
    """In the client process: one session, one command; payload bytes, wire bytes, seconds."""
    client = (DeflateIMAP4 if compressed else imaplib.IMAP4)("127.0.0.1", port)
    client.login(user, password)
    if compressed:
        client.compress()
    client.select("INBOX")
    counting = _Counting(client.sock)   # from here on: the command's bytes on the wire
    if compressed:
        assert not client.file.buf      # nothing left over from SELECT
        client.file = _FastInflating(counting, client.file.inflate)   # the same stream
    else:
        client.file = _CountingFile(client.file, counting)   # imaplib reads through its file
    start = time.perf_counter()
    command = COMMANDS[which]
    if command[0] == "UID":
        typ, data = client.uid(*command[1:])
    else:
        typ, data = client.fetch(*command[1:])
    seconds = time.perf_counter() - start
    assert typ == "OK"
    payload = sum(len(item[0]) + len(item[1]) if isinstance(item, tuple) else len(item)
                  for item in data)
    client.logout()
    return {"payload": payload, "wire": counting.received, "seconds": seconds}


class _FastInflating:
    """The compressed read side with a moving offset (the tests' `Inflating` copies its buffer on
    every read, which made the client, not the gateway, the bottleneck of a bulk FETCH)."""

    def __init__(self, sock, inflate):
        self.sock, self.inflate = sock, inflate
        self.buf, self.pos = bytearray(), 0

    def _more(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise EOFError("server closed the connection")
        if self.pos > 1 << 20:   # drop what was read, now and then
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += self.inflate.decompress(data)

    def readline(self, limit: int = -1) -> bytes:
        while (end := self.buf.find(b"\n", self.pos)) < 0:
            self._more()
        line = bytes(self.buf[self.pos:end + 1])
        self.pos = end + 1
        return line

    def read(self, size: int) -> bytes:
        while len(self.buf) - self.pos < size:
            self._more()
        out = bytes(self.buf[self.pos:self.pos + size])
        self.pos += size
        return out

    def close(self) -> None:
        pass


class _CountingFile:
    """imaplib's plain read side, counting bytes read (the wire bytes, uncompressed here)."""

    def __init__(self, file, counter: _Counting):
        self.file, self.counter = file, counter

    def readline(self, limit: int = -1) -> bytes:
        line = self.file.readline(limit)
        self.counter.received += len(line)
        return line

    def read(self, size: int) -> bytes:
        data = self.file.read(size)
        self.counter.received += len(data)
        return data

    def close(self) -> None:
        self.file.close()


async def _serve_gateway(env: Env, nursery: trio.Nursery, messages: int, user: str,
                         password: str) -> int:
    cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
    cfg["listeners"][0]["mode"] = "gateway"
    cfg["gateway"] = {"store": str(env.root / "gateway.db"), "poll_interval": "600s"}
    config = loads(json.dumps(cfg))
    ready = trio.Event()
    box: list[int] = []

    async def run() -> None:
        async with gateway_listening(config) as (port, service):
            box.append(port)
            await log_in_until_ingested(service, box[0], user, password, messages)
            ready.set()
            await trio.sleep_forever()

    nursery.start_soon(run)
    await ready.wait()
    return box[0]


async def main(messages: int, rounds: int) -> None:
    env = Env("gateway-compress")
    try:
        user, password = env.user_with(make_mailbox(messages))
        async with trio.open_nursery() as nursery:
            port = await _serve_gateway(env, nursery, messages, user, password)
            runs: dict[tuple[str, bool], list[dict[str, float]]] = {
                (which, compressed): [] for which in COMMANDS for compressed in (False, True)}
            with concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")) as client:
                for _ in range(rounds):   # interleaved: plain, compressed, plain, ...
                    for which, compressed in runs:
                        job = client.submit(measure, port, user, password, compressed, which)
                        cpu = cpu_seconds()
                        result = await trio.to_thread.run_sync(job.result)
                        result["cpu"] = cpu_seconds() - cpu   # the whole session: login..logout
                        runs[which, compressed].append(result)
            nursery.cancel_scope.cancel()
        load = os.getloadavg()
        print(f"gateway COMPRESS=DEFLATE, {messages} messages, {rounds} interleaved rounds, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'command':9} {'mode':10} {'payload MB':>10} {'wire MB':>8} {'MB/s':>7} "
              f"{'CPU ms/MB':>10}  (medians; CPU ms/MB rounds)")
        for (which, compressed), results in runs.items():
            mb = statistics.median(r["payload"] for r in results) / 1e6
            wire = statistics.median(r["wire"] for r in results) / 1e6
            speed = statistics.median(r["payload"] / r["seconds"] for r in results) / 1e6
            per_mb = [1000 * r["cpu"] / (r["payload"] / 1e6) for r in results]
            print(f"{which:9} {'deflate' if compressed else 'plain':10} {mb:10.2f} {wire:8.2f} "
                  f"{speed:7.1f} {statistics.median(per_mb):10.2f}  "
                  f"{min(per_mb):.2f}..{max(per_mb):.2f}")
        for which in COMMANDS:
            plain = statistics.median(1000 * r["cpu"] / (r["payload"] / 1e6)
                                      for r in runs[which, False])
            deflate = statistics.median(1000 * r["cpu"] / (r["payload"] / 1e6)
                                        for r in runs[which, True])
            print(f"{which}: gateway CPU per MB, deflate/plain = {deflate / plain:.2f}x")
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trio.run(main, args.messages, args.rounds)
