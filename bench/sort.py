"""Benchmark: SORT (DATE), SORT (FROM), SORT (SUBJECT) and THREAD=REFERENCES on the same
2,000-message mailbox, served by Dovecot IMAP directly and by the gateway (in-process, SQLite
store, Dovecot POP3 upstream), one run (issue 17).

The mailbox is generated: threads of 1-12 messages whose replies carry References (some with a
missing parent), "Re:"/"Fwd:"/"[list]" subjects, 60 senders, dates spread over a year, bodies of
2-12 KB. Each server is asked each command `--repeat` times on one connection: the first answer
is "cold" (Dovecot builds its sort index, the gateway reads the stored sort fields once), the
others "warm" (median). The answers of both servers must be identical.

The client (imaplib) runs in a process of its own (as a thread of the gateway's process it
would share the GIL with the server it measures). Beside the wall-clock times it reports the
server's CPU (user+system from /proc, in clock ticks: coarse for one warm ask, so warm CPU is
the total of the warm asks divided by their number): the gateway's whole process (it runs in
this one), and for Dovecot its master with its live and reaped children (the session's `imap`
process and any indexer).

Run: .venv/bin/python bench/sort.py [--messages 2000] [--repeat 11]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import email.utils
import imaplib
import json
import multiprocessing
import os
import random
import statistics
import time

import trio
from common import Env, Mailbox, cpu_seconds  # noqa: E402 (puts tests/ on sys.path)
from inprocess import gateway_listening, log_in_until_ingested

from proxy.config import loads
from support.proxyproc import relay_config

COMMANDS = [b"SORT (DATE) UTF-8 ALL", b"SORT (FROM) UTF-8 ALL", b"SORT (SUBJECT) UTF-8 ALL",
            b"THREAD REFERENCES UTF-8 ALL"]


def thread_mailbox(count: int, seed: int = 17) -> Mailbox:
    rng = random.Random(seed)
    messages: list[bytes] = []
    threads: list[list[str]] = []
    for n in range(count):
        if threads and rng.random() < 0.6:
            thread = rng.choice(threads[-50:])
            refs = thread[-rng.randint(1, min(len(thread), 4)):]
            if rng.random() < 0.05:
                refs = ["<gone-%d@bench>" % n] + refs   # a missing parent
            subject = rng.choice(["Re: ", "RE: ", "Fwd: ", "[list] Re: "]) + f"topic {len(threads)}"
        else:
            thread = []
            threads.append(thread)
            refs = []
            subject = f"topic {len(threads)}"
        mid = f"<m{n}.{rng.randrange(10**9)}@bench>"
        thread.append(mid)
        when = email.utils.formatdate(1700000000 + rng.randrange(365 * 86400))
        who = rng.randrange(60)
        header = (f"From: Person {who} <p{who}@example.{rng.choice(['org', 'net', 'com'])}>\r\n"
                  f"To: list@example.org\r\nSubject: {subject}\r\nDate: {when}\r\n"
                  f"Message-ID: {mid}\r\n")
        if refs:
            header += f"References: {' '.join(refs)}\r\nIn-Reply-To: {refs[-1]}\r\n"
        body = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(2000, 12000)))
        messages.append((header + "\r\n" + body + "\r\n").encode())
    return Mailbox(messages)


Timings = dict[bytes, tuple[list[float], list[float], bytes]]   # command -> (wall, cpu, answer)


def measure(port: int, user: str, password: str, repeat: int, server_pid: int,
            children: bool) -> Timings:
    """In the client process: each command `repeat` times, wall time and the server's CPU."""
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, password)
    c.select("INBOX", readonly=True)
    out = {}
    for n, command in enumerate(COMMANDS):
        times, cpus, answer = [], [], b""
        for r in range(repeat):
            tag = b"b%d%d" % (n, r)
            cpu = cpu_seconds(server_pid, children)
            t = time.perf_counter()
            c.send(tag + b" " + command + b"\r\n")
            lines = []
            while True:
                line = c.readline()
                if line.startswith(tag):
                    break
                lines.append(line)
            times.append(time.perf_counter() - t)
            cpus.append(cpu_seconds(server_pid, children) - cpu)
            assert line.split()[1] == b"OK", line
            answer = b"".join(lines)
        out[command] = (times, cpus, answer)
    c.logout()
    return out


def _ratio(dovecot: float, gateway: float) -> str:
    return f"{dovecot / gateway:5.2f}x" if gateway else "  n/a "


async def main(messages: int, repeat: int) -> None:
    env = Env("sort")
    try:
        user, password = env.user_with(thread_mailbox(messages))
        cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg["gateway"] = {"store": str(env.root / "gateway.db"), "poll_interval": "600s"}
        config = loads(json.dumps(cfg))
        async with gateway_listening(config) as (port, service):
            await log_in_until_ingested(service, port, user, password, messages)
            master = env.dovecot.master_pid or env.dovecot._read_master_pid()
            assert master is not None
            with concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")) as client:
                theirs = await trio.to_thread.run_sync(client.submit(
                    measure, env.dovecot.imap_port, user, password, repeat, master, True).result)
                ours = await trio.to_thread.run_sync(client.submit(
                    measure, port, user, password, repeat, os.getpid(), False).result)
        print(f"{messages} messages, {repeat} asks each; gateway speed / Dovecot's (>= 0.5x); "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'command':30} {'dovecot cold':>12} {'gateway cold':>12} {'ratio':>6}"
              f" {'dovecot warm':>12} {'gateway warm':>12} {'ratio':>6} same")
        for command in COMMANDS:
            (dt, _, da), (gt, _, ga) = theirs[command], ours[command]
            dw, gw = statistics.median(dt[1:]), statistics.median(gt[1:])
            print(f"{command.decode():30} {dt[0] * 1000:10.1f}ms {gt[0] * 1000:10.1f}ms"
                  f" {dt[0] / gt[0]:5.2f}x {dw * 1000:10.1f}ms {gw * 1000:10.1f}ms"
                  f" {dw / gw:5.2f}x {'yes' if da == ga else 'NO'}")
        print("server CPU (user+system, /proc, clock ticks): cold ask; warm asks' total / their "
              "number; ratio = Dovecot's CPU / the gateway's")
        for command in COMMANDS:
            (_, dc, _), (_, gc, _) = theirs[command], ours[command]
            dw, gw = sum(dc[1:]) / (repeat - 1), sum(gc[1:]) / (repeat - 1)
            print(f"{command.decode():30} {dc[0] * 1000:10.0f}ms {gc[0] * 1000:10.0f}ms"
                  f" {_ratio(dc[0], gc[0])} {dw * 1000:10.1f}ms {gw * 1000:10.1f}ms"
                  f" {_ratio(dw, gw)}")
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    trio.run(main, args.messages, args.repeat)
