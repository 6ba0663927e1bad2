"""Micro-benchmark of the IMAP parsers (not collected by pytest).

Run: .venv/bin/python tests/unit/imap/bench_parser.py
Feeds synthetic 2,000-message FETCH BODY[] and ENVELOPE response streams in
64 KB chunks and prints MB/s for each parser configuration.
"""

from __future__ import annotations

import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # run as a script

from proxy.imap import NEED_DATA, CommandParser, Limits, ResponseParser  # noqa: E402

CHUNK = 64 * 1024
MESSAGES = 2000


def body_stream(seed: int = 1) -> bytes:
    rng = random.Random(seed)
    parts = []
    for n in range(1, MESSAGES + 1):
        body = b"Subject: test %d\r\n\r\n" % n + b"x" * rng.randint(2_000, 60_000) + b"\r\n"
        parts.append(b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (n, n + 100, len(body), body))
    parts.append(b"A1 OK FETCH completed\r\n")
    return b"".join(parts)


def envelope_stream() -> bytes:
    line = (
        b'* %d FETCH (UID %d FLAGS (\\Seen) ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" '
        b'"Subject %d" (("Fred Foobar" NIL "foobar" "example.com")) '
        b'(("Fred Foobar" NIL "foobar" "example.com")) (("Fred Foobar" NIL "foobar" "example.com")) '
        b'((NIL NIL "mooch" "owatagu.siam.edu")) NIL NIL NIL "<B27397-0100000@cac.washington.edu>"))\r\n'
    )
    return b"".join(line % (n, n, n) for n in range(1, MESSAGES + 1)) + b"A1 OK done\r\n"


def append_stream() -> bytes:
    parts = []
    for n in range(MESSAGES):
        body = b"y" * 20_000
        parts.append(b"A%d APPEND INBOX {%d+}\r\n%s\r\n" % (n, len(body), body))
    return b"".join(parts)


def run(factory, stream: bytes, repeat: int = 5) -> tuple[float, int]:
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    best = float("inf")
    count = 0
    for _ in range(repeat):
        parser = factory()
        count = 0
        start = time.perf_counter()
        for chunk in chunks:
            parser.receive_data(chunk)
            while parser.next_event() is not NEED_DATA:
                count += 1
        best = min(best, time.perf_counter() - start)
    return len(stream) / best / 1e6, count


def main() -> None:
    plus = Limits(max_nonsync_literal=64 * 1024 * 1024)
    cases = [
        ("FETCH BODY[] framing", body_stream(), lambda: ResponseParser()),
        ("FETCH BODY[] parse_args", body_stream(), lambda: ResponseParser(parse_args=True)),
        ("FETCH BODY[] collect+parse", body_stream(),
         lambda: ResponseParser(parse_args=True, collect_literals=True)),
        ("ENVELOPE framing", envelope_stream(), lambda: ResponseParser()),
        ("ENVELOPE parse_args", envelope_stream(), lambda: ResponseParser(parse_args=True)),
        ("APPEND 20 KB LITERAL+", append_stream(), lambda: CommandParser(plus)),
    ]
    for name, stream, factory in cases:
        rate, events = run(factory, stream)
        print(f"{name:30s} {len(stream) / 1e6:8.1f} MB {events:8d} events {rate:10.1f} MB/s")


if __name__ == "__main__":
    main()
