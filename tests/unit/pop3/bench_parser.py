"""Throughput of ResponseParser over a pipelined RETR stream (not collected by pytest).

Run: .venv/bin/python -m tests.unit.pop3.bench_parser
"""

from __future__ import annotations

import time

from proxy.pop3 import NEED_DATA, ResponseParser, writer
from proxy.pop3.events import MultilineData, MultilineEnd

MESSAGES = 2000
CHUNK = 64 * 1024


def _message(i: int) -> bytes:
    header = b"From: a@example.org\r\nSubject: message %d\r\n\r\n" % i
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * (40 + i % 200) + b".a line starting with a dot\r\n" + line * 10
    return header + body


def build_stream() -> tuple[bytes, int]:
    parts = [b"+OK ready\r\n"]
    for i in range(MESSAGES):
        parts.append(writer.ok(b"message follows") + writer.multiline(_message(i)))
    return b"".join(parts), MESSAGES


def run(stream: bytes, unstuff: bool) -> tuple[float, int, int]:
    parser = ResponseParser(unstuff=unstuff)
    for _ in range(MESSAGES):
        parser.expect(True)
    size = ends = 0
    start = time.perf_counter()
    for offset in range(0, len(stream), CHUNK):
        parser.receive_data(stream[offset : offset + CHUNK])
        while (event := parser.next_event()) is not NEED_DATA:
            if type(event) is MultilineData:
                size += len(event.data)
            elif type(event) is MultilineEnd:
                ends += 1
    return time.perf_counter() - start, size, ends


def main() -> None:
    stream, count = build_stream()
    for unstuff in (False, True):
        best = min(run(stream, unstuff)[0] for _ in range(5))
        _, size, ends = run(stream, unstuff)
        assert ends == count, (ends, count)
        mode = "unstuff" if unstuff else "relay  "
        print(f"{mode}: {len(stream) / best / 1e6:8.0f} MB/s  ({len(stream) / 1e6:.1f} MB, "
              f"{ends} bodies, {size / 1e6:.1f} MB body data)")


if __name__ == "__main__":
    main()
