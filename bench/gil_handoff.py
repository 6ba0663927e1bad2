"""What the GIL switch interval costs a thread like the relay engine's (issue 16, login storm).

    .venv/bin/python bench/gil_handoff.py [--round-trips 2000]

Three threads of one process, as in mailproxy with `relay.engine: epoll`: an "engine" thread
echoing bytes on a socketpair (os.read, os.write: it takes the GIL back after each), a "trio"
thread busy with Python work and a system call every ~2,000 additions (logins being handled),
and the measuring client. Prints the echo's round trip p50/p99 in microseconds for switch
intervals 5 ms (CPython's default), 1 ms and 0.2 ms (relay.gil_switch_interval's default),
with the busy thread off and on. No network, no proxy: the GIL hand-off alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time


def round_trips(interval: float, busy: bool, count: int) -> tuple[float, float]:
    """(p50, p99) in microseconds of `count` one-byte echoes through the engine-like thread."""
    sys.setswitchinterval(interval)
    client, engine_side = socket.socketpair()
    stop = threading.Event()

    def engine() -> None:
        while (data := os.read(engine_side.fileno(), 100)) != b"q":
            os.write(engine_side.fileno(), data)

    def busy_trio() -> None:
        total = 0
        while not stop.is_set():
            for _ in range(2000):
                total += 1
            os.getpid()   # a system call now and then, as trio's send/recv/epoll

    threads = [threading.Thread(target=engine)] + ([threading.Thread(target=busy_trio)] if busy else [])
    for thread in threads:
        thread.start()
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        os.write(client.fileno(), b"x")
        os.read(client.fileno(), 100)
        samples.append((time.perf_counter_ns() - started) / 1000)
    os.write(client.fileno(), b"q")
    stop.set()
    for thread in threads:
        thread.join()
    client.close()
    engine_side.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    print(f"GIL hand-off, load average {os.getloadavg()[0]:.1f}; echo round trip p50/p99 in us")
    for interval in (0.005, 0.001, 0.0002):
        idle = round_trips(interval, False, args.round_trips)
        busy = round_trips(interval, True, args.round_trips)
        print(f"switch interval {interval * 1000:.1f} ms: alone {idle[0]:.0f}/{idle[1]:.0f}, "
              f"beside a busy thread {busy[0]:.0f}/{busy[1]:.0f}", flush=True)


if __name__ == "__main__":
    main()
