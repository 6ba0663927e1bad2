"""Benchmark: the same 2,000-message mailbox served by Dovecot IMAP directly and by the gateway
(in-process, SQLite store, Dovecot POP3 upstream), interleaved rounds (issue 7):

    SELECT time, FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE) time, UID FETCH 1:* BODY.PEEK[] MB/s,
    SEARCH TEXT time; medians and gateway/Dovecot ratios (target >= 0.5x Dovecot's speed).

Run: .venv/bin/python bench/gateway.py [--messages 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import imaplib
import json
import statistics
import time

import trio
from common import Env, make_mailbox  # noqa: E402 (puts tests/ on sys.path)

from proxy.config import loads
from proxy.gateway.service import open_gateway
from proxy.metrics import Metrics
from proxy.net.conn import Conn
from proxy.session.context import Runtime, Session
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


async def main(messages: int, rounds: int) -> None:
    env = Env("gateway")
    try:
        mailbox = make_mailbox(messages)
        user, password = env.user_with(mailbox)
        cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg["gateway"] = {"store": str(env.root / "gateway.db"), "poll_interval": "600s"}
        config = loads(json.dumps(cfg))
        metrics = Metrics()
        runtime = Runtime.build(config, metrics)
        async with open_gateway(config, metrics) as service, trio.open_nursery() as nursery:
            async def handler(stream):
                conn = Conn(stream)
                session = Session(runtime, config.listeners[0], "127.0.0.1", 0, "127.0.0.1", 0)
                try:
                    await service.handle(session, conn)
                finally:
                    await conn.aclose()

            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                              host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            t = time.perf_counter()
            while True:   # first login ingests; later logins wait for nothing new
                await trio.to_thread.run_sync(lambda: imaplib.IMAP4("127.0.0.1", port).login(
                    user, password))
                box = await service.store.get_mailbox(
                    (await service.store.ensure_account("main", user)).id, "INBOX")
                if box.exists >= messages:
                    break
            print(f"ingest of {messages} messages via POP3: {time.perf_counter() - t:.1f}s")
            results = {"dovecot": [], "gateway": []}
            targets = {"dovecot": env.dovecot.imap_port, "gateway": port}
            for _ in range(rounds):
                for label, target in targets.items():
                    results[label].append(await trio.to_thread.run_sync(
                        measure, target, user, password, "zzqq-not-there"))
            nursery.cancel_scope.cancel()
        print(f"{'metric':16} {'dovecot':>10} {'gateway':>10} {'gw speed / dovecot':>20}")
        for key in results["dovecot"][0]:
            d = statistics.median(r[key] for r in results["dovecot"])
            g = statistics.median(r[key] for r in results["gateway"])
            speed = g / d if key.endswith("MBps") else d / g
            print(f"{key:16} {d:10.4f} {g:10.4f} {speed:19.2f}x")
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.messages, args.rounds)
