"""Memory of one big APPEND through the gateway (issue 16: the literal collected in one copy).

    .venv/bin/python bench/append_memory.py [--mb 50] [--rounds 3]

The gateway runs in this process (bench/inprocess.py: SQLite store, Dovecot POP3 upstream) under
`tracemalloc`; a client in another process (so that its own copy of the message is not traced)
logs in and APPENDs a message of `--mb` MB, then logs out. Printed per round: the traced peak
above what was traced before the APPEND, in MB and as a multiple of the message's size, and
the wall time of the APPEND. A parser that collects the literal in one buffer and then copies
it into the `Literal` peaks near 2x plus whatever the store's path adds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import imaplib
import json
import multiprocessing
import time
import tracemalloc

import trio
from common import Env, small_mailbox  # noqa: E402 (puts tests/ on sys.path)
from inprocess import gateway_listening

from proxy.config import loads
from support.proxyproc import relay_config


def append(port: int, user: str, password: str, size: int) -> float:
    """In the client process: LOGIN, APPEND a `size`-byte message, LOGOUT; the APPEND's time."""
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\nFrom: a@example.org\r\n\r\n" + line * (size // len(line))
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, password)
    t = time.perf_counter()
    status, _ = c.append("INBOX", None, None, body)
    elapsed = time.perf_counter() - t
    assert status == "OK", status
    c.logout()
    return elapsed


async def main(mb: int, rounds: int) -> None:
    env = Env("append-memory")
    try:
        user, password = env.user_with(small_mailbox(1))
        cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg["listeners"][0]["limits"] = {"max_literal": f"{mb + 8}MiB"}
        cfg["gateway"] = {"store": str(env.root / "gateway.db"), "poll_interval": "600s"}
        config = loads(json.dumps(cfg))
        size = mb * 1024 * 1024
        async with gateway_listening(config) as (port, _):
            with concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")) as pool:
                tracemalloc.start()
                for n in range(rounds):
                    before, _ = tracemalloc.get_traced_memory()
                    tracemalloc.reset_peak()
                    future = pool.submit(append, port, user, password, size)
                    elapsed = await trio.to_thread.run_sync(future.result)
                    _, peak = tracemalloc.get_traced_memory()
                    print(f"round {n + 1}: APPEND of {mb} MB: traced peak {(peak - before) / 2**20:.1f}"
                          f" MB above before ({(peak - before) / size:.2f}x the message), "
                          f"{elapsed:.2f} s", flush=True)
                tracemalloc.stop()
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.mb, args.rounds)
