"""Python CPU per relayed command in the relay cores alone (issue 16): no sockets, no engine.

    .venv/bin/python bench/relay_core_cost.py [--commands 20000] [--repeat 3] [--profile]

Drives proxy/relay/imap_core.py with `a1 NOOP` and its tagged OK, and pop3_core.py with
`RETR 1` and a 2 KB answer (status line, body, terminator), each chunk as the engine hands it
over (`forward_first`, then `judge()`), with metrics on (a fresh registry), and prints the
thread CPU time per command (`time.thread_time`: what the engine's thread pays per command
besides the system calls). `--profile`: cProfile of the IMAP loop, by own time.

To compare with another revision, run the same file against that revision's `proxy`:
`git archive REV proxy | tar -x -C /tmp/base && PYTHONPATH=/tmp/base .venv/bin/python
bench/relay_core_cost.py`. On a loaded machine compare runs taken one right after the other.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

from proxy.config import loads
from proxy.imap import NEED_DATA
from proxy.imap import CommandParser as ImapCommands
from proxy.imap import Limits as ImapLimits
from proxy.imap import ResponseParser as ImapResponses
from proxy.metrics import Metrics
from proxy.pop3 import CommandParser as Pop3Commands
from proxy.pop3 import Limits as Pop3Limits
from proxy.relay.imap_core import ImapRelayCore
from proxy.relay.pop3_core import Pop3RelayCore
from proxy.session.context import Runtime, Session

RETR_ANSWER = b"+OK 2000 octets\r\n" + (b"x" * 76 + b"\r\n") * 25 + b".\r\n"


def session(protocol: str) -> Session:
    port = {"imap": 143, "pop3": 110}[protocol]
    config = loads(json.dumps({
        "listeners": [{"name": "l", "protocol": protocol, "address": "127.0.0.1:0"}],
        "upstreams": {"up": {"host": "192.0.2.1", protocol: {"port": port, "tls": "none"}}},
        "routes": [{"match": "*", "upstream": "up"}],
    }))
    runtime = Runtime.build(config, Metrics())
    return Session(runtime, config.listeners[0], "127.0.0.1", 40000, "127.0.0.1", port)


def imap_noops(n: int) -> float:
    responses = ImapResponses(ImapLimits())
    responses.receive_data(b"* OK hi\r\na0 OK logged in\r\n")
    while responses.next_event() is not NEED_DATA:
        pass
    core = ImapRelayCore(session("imap"), ImapCommands(ImapLimits()), responses, b"", 0.0)
    command, answer = b"a1 NOOP\r\n", b"a1 OK NOOP completed (0.001 + 0.000 secs).\r\n"
    start = time.thread_time()
    for _ in range(n):
        core.client_data(command, 1.0, True)
        core.judge()
        core.take_replies()
        core.upstream_data(answer, 1.0)
        core.take_replies()
    return (time.thread_time() - start) / n * 1e6


def pop3_retrs(n: int) -> float:
    core = Pop3RelayCore(session("pop3"), Pop3Commands(Pop3Limits()), [b"UIDL"], 0.0)
    start = time.thread_time()
    for _ in range(n):
        core.client_data(b"RETR 1\r\n", 1.0, True)
        core.judge()
        core.take_replies()
        core.upstream_data(RETR_ANSWER, 1.0)
        core.take_replies()
    return (time.thread_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(imap_noops, args.commands)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        return
    for _ in range(args.repeat):
        print(f"IMAP NOOP + tagged OK: {imap_noops(args.commands):6.2f} us CPU per command; "
              f"POP3 RETR + 2 KB answer: {pop3_retrs(args.commands):6.2f} us")


if __name__ == "__main__":
    main()
