"""`mailproxy gen-key`: a key line for `gateway.key_file` (encryption at rest, proxy/store/crypto.py).

The key file holds `keyid:base64-32-byte-key` lines; the last one encrypts, all of them decrypt.
`gen-key --out FILE` appends a new line (creating FILE with mode 0600), which is how keys are
rotated; without `--out` the line is printed. An id already in the file is refused, and so is a
file that is not a key file, so a typo cannot make the store unreadable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from .store import KeyRing, StoreKeyError


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("gen-key", help="write a key for gateway.key_file (encryption at rest)")
    parser.add_argument("--id", dest="key_id", metavar="ID",
                        help="key id (default: key-YYYYMMDD, today in UTC)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="append the key to FILE (created with mode 0600); default: print it")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Exit status 0, or 2 with one line on stderr (bad id, unreadable or invalid FILE)."""
    key_id = args.key_id or f"key-{dt.datetime.now(dt.timezone.utc):%Y%m%d}"
    line = KeyRing.generate_line(key_id)
    try:
        KeyRing.parse(line)   # validates the id
    except StoreKeyError as exc:
        print(f"gen-key: --id {key_id!r}: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        print(line)
        return 0
    try:
        existing = args.out.read_text() if args.out.exists() else ""
        if existing.strip():
            ring = KeyRing.parse(existing)
            if f"\n{key_id}:" in "\n" + existing:
                raise StoreKeyError(f"key id {key_id!r} is already in the file (ring {ring!r})")
        fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as out:
            if existing and not existing.endswith("\n"):
                out.write("\n")
            out.write(line + "\n")
    except (OSError, StoreKeyError) as exc:
        print(f"gen-key: {args.out}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: added key {key_id!r}; it encrypts new records, older keys still decrypt "
          f"(restart mailproxy to use it)")
    return 0
