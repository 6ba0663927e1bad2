"""Growth of the gateway's work with hostile messages: for each message shape (a unit repeated
in one place of a message) and each function that reads a stored message (`tests/fuzz/targets.py`),
the CPU at n and 4n repeats; a ratio well above 4 is work growing faster than the input.

    PYTHONPATH=. .venv/bin/python bench/fuzz/growth.py [--size 16384] [--factor 4] [--only SUBSTR]
                                                       [--target NAME] [--flag 8]

The CPU is this process's (time.process_time), the smaller of two runs: on a loaded machine a
ratio is noisy, so a flagged shape is re-measured at --factor**2 before it is reported, and a
finding is then pinned by a deterministic counter in a test (tests/fuzz/, tests/gateway_mime/).
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from tests.fuzz.targets import INGEST, TARGETS  # noqa: E402

HEAD = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
MIME = HEAD + b"MIME-Version: 1.0\r\n"

# where a repeated unit goes: a function of the repeated bytes -> the message
SLOTS: dict[str, Callable[[bytes], bytes]] = {
    "subject": lambda x: b"Subject: " + x + b"\r\n\r\nbody\r\n",
    "from": lambda x: b"From: " + x + b"\r\n\r\nbody\r\n",
    "to": lambda x: b"To: " + x + b"\r\n\r\nbody\r\n",
    "cc": lambda x: b"Cc: " + x + b"\r\n\r\nbody\r\n",
    "date": lambda x: b"Date: " + x + b"\r\n\r\nbody\r\n",
    "received": lambda x: b"Received: " + x + b"\r\n\r\nbody\r\n",
    "message-id": lambda x: b"Message-ID: " + x + b"\r\n\r\nbody\r\n",
    "references": lambda x: b"References: " + x + b"\r\n\r\nbody\r\n",
    "in-reply-to": lambda x: b"In-Reply-To: " + x + b"\r\n\r\nbody\r\n",
    "ctype": lambda x: MIME + b"Content-Type: text/plain" + x + b"\r\n\r\nbody\r\n",
    "ctype-raw": lambda x: MIME + b"Content-Type: " + x + b"\r\n\r\nbody\r\n",
    "multipart-params": lambda x: MIME + b"Content-Type: multipart/mixed" + x
    + b"; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
    "disposition": lambda x: MIME + b"Content-Disposition: attachment" + x
    + b"\r\n\r\nbody\r\n",
    "cte": lambda x: MIME + b"Content-Transfer-Encoding: " + x + b"\r\n\r\nbody\r\n",
    "language": lambda x: MIME + b"Content-Language: " + x + b"\r\n\r\nbody\r\n",
    "x-header": lambda x: HEAD + b"X-Junk: " + x + b"\r\n\r\nbody\r\n",
    "header-lines": lambda x: HEAD + x + b"\r\n\r\nbody\r\n",
    "body-plain": lambda x: HEAD + b"\r\n" + x,
    "body-qp": lambda x: MIME + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + x,
    "body-b64": lambda x: MIME + b"Content-Transfer-Encoding: base64\r\n\r\n" + x,
    "body-html": lambda x: MIME + b"Content-Type: text/html\r\n\r\n" + x,
    "body-html-qp": lambda x: MIME + b"Content-Type: text/html\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + x,
    "multipart-body": lambda x: MIME + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    + x + b"\r\n--b--\r\n",
    "multipart-alt": lambda x: MIME + b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
    + x,
    "digest": lambda x: MIME + b"Content-Type: multipart/digest; boundary=b\r\n\r\n" + x,
    "part-header": lambda x: MIME + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    + x + b"\r\n\r\nbody\r\n--b--\r\n",
    "rfc822-body": lambda x: MIME + b"Content-Type: message/rfc822\r\n\r\n" + x,
}

UNITS: list[bytes] = [
    b",", b"a,", b", ", b"a@b,", b"<a@b>,", b"x <a@b>,", b"\"q\" <a@b>, ", b"g: a@b, c@d; ",
    b"g:", b":", b";", b"<", b">", b"<a", b"<a@b", b"<<", b"<>", b"@", b"@a,", b"<@a,", b"@a:",
    b"(", b")", b"(a)", b"((", b"\"", b"\"a", b"\\", b"\\\"", b"[", b"]", b"[b] ", b"[", b"re: ",
    b"fwd: ", b"[fwd: ", b"(fwd)", b"re:", b"a ", b"a", b" ", b"\t", b"\r\n ", b"\r\n", b"\n",
    b"\r", b"\x00", b"\xff", b"\xc3\xa9", b"=?", b"?=", b"=?a?q?x", b"=?utf-8?q?x?= ", b"=?utf-8?b?eA==?=",
    b"=?x?q?", b"=?utf-8?q?=", b"=", b"=\r\n", b"=4", b"= \r\n", b"  \r\n", b" \t", b"; a=b",
    b"; a*0*=x", b"; charset*0=x", b"; charset*=x'y'z", b";", b"; a=\"", b"; a=\"b\\\"", b"; a*=",
    b"=\"", b"--b\r\n", b"--b\r\n\r\n", b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n",
    b"--b\r\nContent-Type: message/rfc822\r\n\r\n", b"Content-Type: message/rfc822\r\n\r\n",
    b"--", b"--b", b"-", b"a:\r\n", b"a\r\n", b":\r\n", b" a\r\n", b"Subject: x\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"<p>", b"<", b"<!--", b"<style>", b"<blockquote>",
    b"&amp;", b"&", b"<a href=\"", b">x\r\n", b"> ", b"begin 644 a\r\n", b"0", b"1", b"Mon, ", b"+",
    b"%", b"'", b"*", b"?", b"/", b"text/", b".", b"a.", b"..",
]


def cpu(function: Callable[[bytes], object], raw: bytes) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.process_time()
        try:
            function(raw)
        except Exception:   # noqa: BLE001 - reported by the atheris harness, not here
            pass
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384, help="bytes of repeated unit at n")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--flag", type=float, default=8.0, help="ratio reported (linear: --factor)")
    parser.add_argument("--only", default="", help="slots whose name holds this")
    parser.add_argument("--target", default="", help="targets whose name holds this")
    parser.add_argument("--ingest", action="store_true", help="only what ingest runs (INGEST)")
    parser.add_argument("--per-byte", type=float, default=0.0, metavar="US",
                        help="also report linear work above this many microseconds per byte "
                             "of the larger message (a constant that still stalls the others)")
    args = parser.parse_args()
    targets = {n: f for n, f in TARGETS.items() if args.target in n and (not args.ingest or n in INGEST)}
    slots = {n: f for n, f in SLOTS.items() if args.only in n}
    found = 0
    for (slot, build), unit in itertools.product(slots.items(), dict.fromkeys(UNITS)):
        n = max(1, args.size // len(unit))
        small, large = build(unit * n), build(unit * (n * args.factor))
        for name, function in targets.items():
            a, b = cpu(function, small), cpu(function, large)
            if args.per_byte and b * 1e6 / len(large) > args.per_byte:
                print(f"HEAVY {name:24} slot={slot:16} unit={unit!r:40} {len(large)}B "
                      f"{b * 1e3:.1f} ms: {b * 1e6 / len(large):.2f} us per byte", flush=True)
            if b < 0.02 or b / max(a, 1e-4) < args.flag:
                continue
            huge = build(unit * (n * args.factor ** 2))
            c = cpu(function, huge)
            if c / max(b, 1e-4) < args.flag:
                continue
            found += 1
            print(f"SUPERLINEAR {name:24} slot={slot:16} unit={unit!r:40} "
                  f"{len(small)}B {a * 1e3:.1f} ms, x{args.factor} {b * 1e3:.1f} ms, "
                  f"x{args.factor ** 2} {c * 1e3:.1f} ms", flush=True)
    print(f"done: {found} superlinear (slot, unit, target) of {len(slots) * len(set(UNITS)) * len(targets)}")


if __name__ == "__main__":
    main()
