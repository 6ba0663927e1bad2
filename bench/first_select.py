"""Benchmark: LOGIN and the first SELECT right after it, on a 2,000-message mailbox, Dovecot IMAP
directly vs the gateway (in-process, SQLite store, Dovecot POP3 upstream), interleaved rounds
(issue 13's "first SELECT after LOGIN").

A gateway LOGIN waits for its account's upstream sync (POP3 UIDL of every message, compared
with the store's); the SELECT after it loads the mailbox's index. Each round is a new connection
(LOGIN, SELECT, LOGOUT) per server. Reported: medians of wall time, the server's CPU per
command (from /proc, the mean over the rounds: the gateway's process; Dovecot's master with its
children, i.e. login, auth and imap processes), the gateway's CPU per round and its
garbage-collector pauses (`gc.callbacks`: count and longest, per generation).

Run: .venv/bin/python bench/first_select.py [--messages 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import imaplib
import json
import multiprocessing
import os
import statistics
import time

import trio
from common import Env, cpu_seconds, make_mailbox  # noqa: E402 (puts tests/ on sys.path)
from inprocess import gateway_listening

from proxy.config import loads
from support.proxyproc import relay_config


def measure(port: int, user: str, password: str, server_pid: int = 0,
            children: bool = False) -> dict[str, float]:
    """In the client process: one LOGIN, SELECT, LOGOUT; wall time and the server's CPU (from
    /proc, clock ticks: summed over rounds, not one by one) of LOGIN and of SELECT."""
    def cpu() -> float:
        return cpu_seconds(server_pid, children) if server_pid else 0.0

    c = imaplib.IMAP4("127.0.0.1", port)
    out = {}
    for key, command in (("login", lambda: c.login(user, password)),
                         ("select", lambda: c.select("INBOX"))):
        before, t = cpu(), time.perf_counter()
        command()
        out[f"{key}_s"] = time.perf_counter() - t
        out[f"{key}_cpu"] = cpu() - before
    c.logout()
    return out


class GcPauses:
    """Every collection of this process: (generation, seconds)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._start))


async def main(messages: int, rounds: int) -> None:
    env = Env("first-select")
    pauses = GcPauses()
    try:
        user, password = env.user_with(make_mailbox(messages))
        cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg["gateway"] = {"store": str(env.root / "gateway.db"), "poll_interval": "600s"}
        config = loads(json.dumps(cfg))
        async with gateway_listening(config) as (port, service):
            results: dict[str, list[dict[str, float]]] = {"dovecot": [], "gateway": []}
            cpu: list[float] = []
            with concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")) as client:
                while True:   # the first logins ingest the mailbox: not rounds
                    await trio.to_thread.run_sync(client.submit(measure, port, user,
                                                                password).result)
                    account = await service.store.ensure_account("main", user)
                    box = await service.store.get_mailbox(account.id, "INBOX")
                    if box is not None and box.exists >= messages:
                        break
                gc.callbacks.append(pauses)
                master = env.dovecot.master_pid or env.dovecot._read_master_pid()
                assert master is not None
                for _ in range(rounds):
                    results["dovecot"].append(await trio.to_thread.run_sync(client.submit(
                        measure, env.dovecot.imap_port, user, password, master, True).result))
                    before = time.process_time()
                    results["gateway"].append(await trio.to_thread.run_sync(client.submit(
                        measure, port, user, password, os.getpid()).result))
                    cpu.append(time.process_time() - before)
                gc.callbacks.remove(pauses)
        print(f"{messages} messages, {rounds} rounds; load average {os.getloadavg()[0]:.1f}")
        for key in ("login", "select"):
            d, g = (statistics.median(r[f"{key}_s"] for r in results[label])
                    for label in ("dovecot", "gateway"))
            dc, gc_ = (sum(r[f"{key}_cpu"] for r in results[label]) / rounds
                       for label in ("dovecot", "gateway"))
            print(f"{key:7} wall median: dovecot {d * 1000:8.2f} ms  gateway {g * 1000:8.2f} ms  "
                  f"speed {d / g:5.2f}x;  server CPU per command (mean): dovecot "
                  f"{dc * 1000:6.2f} ms  gateway {gc_ * 1000:6.2f} ms"
                  + (f"  {dc / gc_:5.2f}x" if gc_ else ""))
        print(f"gateway CPU per round (LOGIN + sync + SELECT + LOGOUT): median "
              f"{statistics.median(cpu) * 1000:.1f} ms")
        for generation in (0, 1, 2):
            times = [s for g, s in pauses.pauses if g == generation]
            if times:
                print(f"GC generation {generation}: {len(times) / rounds:.1f} per round, "
                      f"longest {max(times) * 1000:.1f} ms, total {sum(times) * 1000:.1f} ms")
    finally:
        env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    trio.run(main, args.messages, args.rounds)
