"""`mailproxy gateway migrate --from FILE.db --to postgresql://...`: copy an SQLite gateway store
into PostgreSQL exactly (ids, UIDs, UIDVALIDITY, MODSEQs, flags, UIDL history, sealed records:
proxy/store/migrate.py). Resumable: run it again after an interruption. Refuses a target that
already holds accounts unless `--force` (which empties it first).

The PostgreSQL password comes from `--password-file FILE`, the MAILPROXY_STORE_PASSWORD
environment variable or the URL. Exit status: 0 copied, 1 failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TextIO

PASSWORD_ENV = "MAILPROXY_STORE_PASSWORD"
_BAR_WIDTH = 30


def add_cli(commands: argparse._SubParsersAction) -> None:
    """Add `migrate` to the `gateway` subcommands."""
    parser = commands.add_parser("migrate", help="copy an SQLite gateway store into PostgreSQL")
    parser.add_argument("--from", dest="source", required=True, metavar="FILE.db",
                        help="the SQLite store (stop the gateway first)")
    parser.add_argument("--to", dest="target", required=True, metavar="URL",
                        help="postgresql://USER@HOST/DB?sslmode=...")
    parser.add_argument("--password-file", metavar="FILE",
                        help=f"file holding the database password (default: ${PASSWORD_ENV})")
    parser.add_argument("--force", action="store_true",
                        help="empty a target that already holds accounts, then copy")


class TableProgress:
    """`accounts [#####.....] 120/500` redrawn in place on a terminal, one line per table."""

    def __init__(self, out: TextIO):
        self.out, self.table = out, ""
        self.last = 0.0

    def __call__(self, table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if table == self.table and done < total and now - self.last < 0.1:
            return
        if table != self.table and self.table:
            self.out.write("\n")
        self.table, self.last = table, now
        filled = _BAR_WIDTH * done // total if total else _BAR_WIDTH
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self.out.write(f"\r{table:<10} [{bar}] {done}/{total}")
        self.out.flush()

    def finish(self) -> None:
        if self.table:
            self.out.write("\n")
            self.out.flush()


def run_cli(args: argparse.Namespace) -> int:
    from ..store import StoreError, display_store, is_postgres_url
    from ..store.migrate import copy_sqlite_to_postgres

    if not is_postgres_url(args.target):
        print(f"--to {args.target!r}: expected a postgresql:// URL", file=sys.stderr)
        return 2
    password = os.environ.get(PASSWORD_ENV)
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as fh:
                password = fh.read().rstrip("\r\n")
        except OSError as exc:
            print(f"cannot read password file: {exc.strerror}", file=sys.stderr)
            return 2
    bar = TableProgress(sys.stderr) if sys.stderr.isatty() else None
    import psycopg

    try:
        counts = copy_sqlite_to_postgres(args.source, args.target, password=password,
                                         force=args.force, progress=bar)
    except (StoreError, psycopg.Error) as exc:
        if bar:
            bar.finish()
        message = " ".join(str(exc).split())
        print(f"migrate to {display_store(args.target)} failed: {message}", file=sys.stderr)
        return 1
    if bar:
        bar.finish()
    summary = ", ".join(f"{n} {table}" for table, n in counts.items())
    print(f"migrated {args.source} to {display_store(args.target)}: {summary}")
    return 0
