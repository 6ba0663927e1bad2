"""`python tests/gateway/sync_worker.py --config F USER`: the sync CLI, slowed down for the crash test.

Small batches (5 messages) and an 8 ms pause per message stretch a 300-message sync over ~2.5 s of
commits, so a SIGKILL at a random moment lands inside ingest most of the time, not only in startup.
Nothing else differs from `python -m proxy.gateway.sync_cli`.
"""

import importlib.util
import pathlib
import sys

if importlib.util.find_spec("proxy") is None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

from proxy.gateway import fetcher, sync_cli  # noqa: E402

fetcher.BATCH_MESSAGES = 5
_add = fetcher._Ingest.add


async def _slow_add(self, uidl, body):
    await trio.sleep(0.008)
    await _add(self, uidl, body)


fetcher._Ingest.add = _slow_add

if __name__ == "__main__":
    sys.exit(sync_cli.main())
