"""`python tests/gateway/sync_worker.py --config F USER`: the sync CLI, instrumented for the crash tests.

Small batches (5 messages), and a line `committed N` on stdout after each batch is committed (SQLite
or PostgreSQL store), so a test can kill the process after a chosen number of commits: a point
counted in progress, not in seconds. An 8 ms pause per message keeps the next batch in flight when
the kill arrives (it slows the work down; nothing waits on it); SYNC_WORKER_PAUSE_MS=0 leaves it out
for a test that needs no kill mid-batch. With the environment variable
SYNC_WORKER_STALL_AFTER=K the worker stops for good after reporting its K-th commit, still holding
its fetch lease with the next batch fetched and waiting: a test can act on that state however slow
the machine is, then SIGKILL it. Nothing else differs from `python -m proxy.gateway.sync_cli`.
"""

import importlib.util
import os
import pathlib
import sys

if importlib.util.find_spec("proxy") is None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

from proxy.gateway import ingest_batches, sync_cli  # noqa: E402
from proxy.store.postgres import PostgresStore  # noqa: E402
from proxy.store.sqlite import SqliteStore  # noqa: E402

ingest_batches.BATCH_MESSAGES = 5
STALL_AFTER = int(os.environ.get("SYNC_WORKER_STALL_AFTER", "0"))   # 0: never stall
PAUSE = int(os.environ.get("SYNC_WORKER_PAUSE_MS", "8")) / 1000
_add = ingest_batches.Ingest.add
_commits = 0


async def _slow_add(self, uidl, body, *rest):
    await trio.sleep(PAUSE)
    await _add(self, uidl, body, *rest)


def _reporting(ingest_many):
    async def reporting_ingest_many(self, account_id, items):
        global _commits
        uids = await ingest_many(self, account_id, items)
        print(f"committed {len(items)}", flush=True)
        _commits += 1
        if _commits == STALL_AFTER:
            await trio.sleep_forever()
        return uids
    return reporting_ingest_many


ingest_batches.Ingest.add = _slow_add
SqliteStore.ingest_many = _reporting(SqliteStore.ingest_many)
PostgresStore.ingest_many = _reporting(PostgresStore.ingest_many)

if __name__ == "__main__":
    sys.exit(sync_cli.main())
