"""What the relay engine's lower GIL switch interval costs CPU-bound threads of the process.

    .venv/bin/python bench/gil_cpu_cost.py [--rounds 8] [--parses 20]

proxy/relay/engine.py lowers sys.setswitchinterval to relay.gil_switch_interval (0.2 ms) for the whole
process while it runs, so two threads that both want the GIL (trio's busy with logins, a worker
thread parsing MIME or searching bodies for the gateway) hand it over every 0.2 ms instead of
every 5 ms. Two threads parse the same multipart message with the stdlib email package; rounds
at 5 ms and at SWITCH_INTERVAL are interleaved; prints the process CPU per parse (getrusage,
user + system) as median, min and max over the rounds, and the load average.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import resource
import sys
import threading

SWITCH_INTERVAL = 0.0002   # relay.gil_switch_interval's default (not imported: a bench runs on any checkout)
MESSAGE = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           + b"".join(b"--XX\r\nContent-Type: text/plain\r\n\r\n" + b"line of text\r\n" * 50
                      for _ in range(20))
           + b"--XX--\r\n")


def parse(count: int) -> None:
    for _ in range(count):
        email.message_from_bytes(MESSAGE, policy=email.policy.default).get_body()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_per_parse_us(interval: float, parses: int) -> float:
    sys.setswitchinterval(interval)
    threads = [threading.Thread(target=parse, args=(parses,)) for _ in range(2)]
    started = cpu_seconds()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (cpu_seconds() - started) / (2 * parses) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--parses", type=int, default=20, help="per thread and round")
    args = parser.parse_args()
    results: dict[float, list[float]] = {0.005: [], SWITCH_INTERVAL: []}
    for _ in range(args.rounds):
        for interval in results:
            results[interval].append(cpu_per_parse_us(interval, args.parses))
    print(f"load average {os.getloadavg()[0]:.1f}; CPU per parse, two CPU-bound threads")
    for interval, samples in results.items():
        samples.sort()
        print(f"switch interval {interval * 1000:.1f} ms: median {samples[len(samples) // 2]:.0f} us "
              f"(min {samples[0]:.0f}, max {samples[-1]:.0f})")


if __name__ == "__main__":
    main()
