"""RSS per idle TLS client connection: this tree's proxy against another revision's (issue 16).

    .venv/bin/python bench/tls_memory.py [--base REV] [--connections 400]

Both proxies serve an implicit-TLS IMAP listener with one trustme certificate. For each, after a
warm-up of 50 connections (opened and closed), `--connections` clients finish the TLS handshake
and read the greeting, then stay idle before login; the proxy's RSS (/proc/PID/status VmRSS)
before and after, divided by the connections, is the memory one idle TLS connection costs
(the TLS layer's share: a session after login adds the relay's). One run per proxy; repeat it
for the spread.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import socket
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ab_relay import export, proxy_from  # noqa: E402
from clients import client_tls_context  # noqa: E402
from common import Env, tls_listener  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def held_connections(port: int, ctx, count: int) -> list:
    held = []
    for _ in range(count):
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                               server_hostname="localhost")
        if not sock.recv(1000).startswith(b"* OK"):
            raise SystemExit("no IMAP greeting over TLS")
        held.append(sock)
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="revision to compare with (main)")
    parser.add_argument("--connections", type=int, default=400)
    args = parser.parse_args()
    root = export(args.base)
    try:
        with Env("tlsmem", tls=True) as env:
            listeners = [tls_listener(env, "imap", "imap")]
            procs = {"base": proxy_from(env, root, listeners), "this": proxy_from(env, None, listeners)}
            ctx = client_tls_context(str(env.ca_file))
            for label, proc in procs.items():
                for sock in held_connections(proc.port("imap"), ctx, 50):  # warm-up
                    sock.close()
                time.sleep(1)
                before = rss_kb(proc.pid)
                held = held_connections(proc.port("imap"), ctx, args.connections)
                time.sleep(2)
                after = rss_kb(proc.pid)
                print(f"{label}: {args.connections} idle TLS connections, RSS {before} -> {after} KB, "
                      f"{(after - before) / args.connections:.1f} KB each", flush=True)
                for sock in held:
                    sock.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
