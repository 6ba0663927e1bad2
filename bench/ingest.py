"""Gateway ingest benchmark: POP3 (local Dovecot) -> SQLite and PostgreSQL stores, with and
without encryption.

    .venv/bin/python bench/ingest.py [--messages 2000] [--seed 1]

Starts a private Dovecot (tests/support/dovecot.py; needs root and the test packages), delivers
`--messages` typical mails of 5-50 KB (text, HTML alternative, a binary attachment: the test corpus
generator), then runs one `sync_account` into a fresh store per mode and prints messages/s, MB/s and
the store size relative to the raw bytes. Targets: >= 300 messages/s, store <= 1.3x raw.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from proxy.gateway.fetcher import sync_account  # noqa: E402
from proxy.store import KeyRing, open_store  # noqa: E402
from tests.gateway.helpers import generated_message, make_config, upstream_count  # noqa: E402
from tests.support.dovecot import start_dovecot  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from support.postgres import start_postgres  # noqa: E402


async def _run(config, location: str, ring: KeyRing | None, user: str, password: str):
    store = await open_store(location, ring)
    started = time.perf_counter()
    result = await sync_account(config, store, "dc", user, password)
    elapsed = time.perf_counter() - started
    size = await store.size_bytes()
    await store.close()
    return result, elapsed, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-bench-"))
    work.chmod(0o711)
    dovecot = start_dovecot(work)
    postgres = start_postgres(work)
    try:
        user, password = dovecot.add_user()
        rng = random.Random(args.seed)
        raw = 0
        for n in range(args.messages):
            message = generated_message(rng, n, rng.randint(5_000, 50_000))
            raw += len(message)
            dovecot.deliver(user, message)
        upstream_count(dovecot.host, dovecot.pop3_port, user, password)   # Dovecot builds its index
        print(f"mailbox: {args.messages} messages, {raw / 1e6:.1f} MB raw "
              f"(mean {raw / args.messages / 1e3:.1f} KB)")
        print(f"{'mode':<20} {'msg/s':>8} {'MB/s':>8} {'seconds':>8} {'store MB':>9} {'ratio':>6}")
        for mode in ("sqlite plain", "sqlite encrypted", "postgresql plain",
                     "postgresql encrypted"):
            location = (postgres.fresh_dsn() if mode.startswith("postgresql")
                        else str(work / f"{mode.replace(' ', '-')}.db"))
            ring = KeyRing.parse(KeyRing.generate_line("bench")) if "encrypted" in mode else None
            config = make_config(dovecot.pop3_port, location)
            result, elapsed, size = trio.run(_run, config, location, ring, user, password)
            assert result.new == args.messages, result
            print(f"{mode:<20} {result.new / elapsed:>8.0f} {result.bytes / elapsed / 1e6:>8.1f} "
                  f"{elapsed:>8.2f} {size / 1e6:>9.1f} {size / result.bytes:>6.2f}")
    finally:
        postgres.stop()
        dovecot.stop()
        if not os.environ.get("MAILPROXY_KEEP_BENCH_DIR"):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
