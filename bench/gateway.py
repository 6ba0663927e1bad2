"""Benchmark: the same 2,000-message mailbox served by Dovecot IMAP directly and by the gateway
(in-process, Dovecot POP3 upstream) on an SQLite store and on a PostgreSQL store (a private
cluster, tests/support/postgres.py), interleaved rounds (issues 7 and 15):

    SELECT time, FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE) time, UID FETCH 1:* BODY.PEEK[] MB/s,
    SEARCH TEXT time; medians and gateway/Dovecot ratios (target >= 0.5x Dovecot's speed).

The client (imaplib) runs in a process of its own, as real clients do: run as a thread of the
gateway's process it shared the GIL with it, and on a loaded machine every time the gateway's
thread was preempted holding the GIL the client waited a scheduler slice too, which made short
commands look up to 10x slower (SELECT: 0.06x measured that way at load 9-15, issue 15).

Run: .venv/bin/python bench/gateway.py [--messages 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import imaplib
import json
import multiprocessing
import statistics
import time

import trio
from common import Env, make_mailbox  # noqa: E402 (puts tests/ on sys.path)
from inprocess import gateway_listening, log_in_until_ingested

from proxy.config import loads
from support.postgres import start_postgres
from support.proxyproc import relay_config


def measure(port: int, user: str, password: str, needle: str) -> dict[str, float]:
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, password)
    out = {}
    t = time.perf_counter()
    c.select("INBOX")
    out["select_s"] = time.perf_counter() - t
    t = time.perf_counter()
    typ, data = c.fetch("1:*", "(FLAGS UID RFC822.SIZE ENVELOPE)")
    out["fetch_env_s"] = time.perf_counter() - t
    t = time.perf_counter()
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
    size = sum(len(item[1]) for item in data if isinstance(item, tuple))
    out["body_MBps"] = size / (time.perf_counter() - t) / 1e6
    t = time.perf_counter()
    typ, data = c.search(None, "TEXT", needle)
    out["search_text_s"] = time.perf_counter() - t
    c.logout()
    return out


async def _serve_gateway(env: Env, store: str, nursery: trio.Nursery, messages: int,
                         user: str, password: str) -> int:
    """Start an in-process gateway on `store`, let it ingest the mailbox; returns its port."""
    cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
    cfg["listeners"][0]["mode"] = "gateway"
    cfg["gateway"] = {"store": store, "poll_interval": "600s"}
    config = loads(json.dumps(cfg))
    ready: trio.Event = trio.Event()
    box: list[int] = []

    async def run() -> None:
        async with gateway_listening(config) as (port, service):
            box.append(port)
            t = time.perf_counter()
            await log_in_until_ingested(service, box[0], user, password, messages)
            kind = "PostgreSQL" if store.startswith("postgresql") else "SQLite"
            print(f"{kind}: ingest of {messages} messages via POP3: "
                  f"{time.perf_counter() - t:.1f}s")
            ready.set()
            await trio.sleep_forever()

    nursery.start_soon(run)
    await ready.wait()
    return box[0]


async def main(messages: int, rounds: int) -> None:
    env = Env("gateway")
    try:
        mailbox = make_mailbox(messages)
        user, password = env.user_with(mailbox)
        postgres = start_postgres(env.root)
        env.on_close(postgres.stop)
        async with trio.open_nursery() as nursery:
            targets = {"dovecot": env.dovecot.imap_port,
                       "sqlite": await _serve_gateway(env, str(env.root / "gateway.db"), nursery,
                                                      messages, user, password),
                       "postgresql": await _serve_gateway(env, postgres.fresh_dsn(), nursery,
                                                          messages, user, password)}
            results: dict[str, list[dict[str, float]]] = {label: [] for label in targets}
            with concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")) as client:
                for _ in range(rounds):
                    for label, target in targets.items():
                        job = client.submit(measure, target, user, password, "zzqq-not-there")
                        results[label].append(await trio.to_thread.run_sync(job.result))
            nursery.cancel_scope.cancel()
        print(f"{'metric':16} {'dovecot':>10} {'sqlite':>10} {'postgresql':>10} "
              f"{'sqlite/dovecot':>15} {'pg/dovecot':>11}")
        for key in results["dovecot"][0]:
            d, lite, pg = (statistics.median(r[key] for r in results[label])
                           for label in ("dovecot", "sqlite", "postgresql"))
            speeds = [(x / d if key.endswith("MBps") else d / x) for x in (lite, pg)]
            print(f"{key:16} {d:10.4f} {lite:10.4f} {pg:10.4f} {speeds[0]:14.2f}x "
                  f"{speeds[1]:10.2f}x")
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.messages, args.rounds)
