"""`python tests/gateway/sync_worker.py --config F USER`: the sync CLI, instrumented for the crash test.

Small batches (5 messages), and a line `committed N` on stdout after each batch is committed, so
the test can kill the process after a chosen number of commits: a point counted in progress, not
in seconds. An 8 ms pause per message keeps the next batch in flight when the kill arrives (it
slows the work down; nothing waits on it). Nothing else differs from `python -m
proxy.gateway.sync_cli`.
"""

import importlib.util
import pathlib
import sys

if importlib.util.find_spec("proxy") is None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

from proxy.gateway import fetcher, sync_cli  # noqa: E402
from proxy.store.sqlite import SqliteStore  # noqa: E402

fetcher.BATCH_MESSAGES = 5
_add = fetcher._Ingest.add
_ingest_many = SqliteStore.ingest_many


async def _slow_add(self, uidl, body):
    await trio.sleep(0.008)
    await _add(self, uidl, body)


async def _reporting_ingest_many(self, account_id, items):
    uids = await _ingest_many(self, account_id, items)
    print(f"committed {len(items)}", flush=True)
    return uids


fetcher._Ingest.add = _slow_add
SqliteStore.ingest_many = _reporting_ingest_many

if __name__ == "__main__":
    sys.exit(sync_cli.main())
