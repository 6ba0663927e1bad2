"""Benchmark: what one IMAP session's view of a large mailbox costs the gateway, in memory and in
CPU, built from the real store (SQLite, the messages as `store.messages()` returns them, through
the gateway's own `MailboxIndex`), in-process without network.

Memory: V views of one M-message mailbox (V sessions with it selected), per view:
- tracemalloc: the bytes the views allocated at SELECT (`SelectedView` + `load` of the shared
  snapshot), and again after another session set a flag on every message;
- RSS: the growth of /proc/self/statm's resident set over the V views, per view (another
  process, gc'd, no tracemalloc: what the kernel charges).
CPU (the thread's CPU clock, gc off, median of rounds), the view's part of each command (the
store, MIME and network parts of those commands do not depend on the view's representation):
- SELECT: a new view subscribed to the hub and loaded from the snapshot;
- FETCH 1:* FLAGS: `1:*` to sequence numbers, each message's meta, in chunks of 256, and its
  `FETCH (FLAGS ...)` line (`fetch_flags_line`);
- UID SEARCH UID 1:*: the UID set to sequence numbers and back to UIDs (what `find` and
  `search` do with the view for a UID key; evaluating other keys reads the same metas);
- UID FETCH of 1,000 single UIDs (a client resyncing): UID -> sequence number lookups;
- EXPUNGE of many (every 10th message): the expunging view's own EXPUNGE lines, and another
  view applying the hub's event (its `updates`);
- another session's flag change to every message, applied by one view.

Each tree runs in a process of its own (this tree, and `--base REV` exported with `git archive`),
on the same store file, filled once per run with this tree's store code.
Run: .venv/bin/python bench/gateway_view_memory.py [--messages 10000 100000] [--views 10]
                                                  [--rounds 5] [--base 8210887]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

from common import REPO_ROOT, Table, median  # noqa: E402
from gateway_fairness import export

FILL = r"""
import datetime as dt, sys
sys.path.insert(0, sys.argv[1])
import trio
from proxy.store import open_store
from proxy.store.base import AppendItem

async def main(path, messages):
    store = await open_store(path)
    account = await store.ensure_account("bench", "user")
    box = await store.create_mailbox(account.id, "Big")
    when = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)
    for start in range(0, messages, 2000):
        items = [AppendItem(b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n),
                            ("\\Seen",) if n % 3 else ("$Label",), when)
                 for n in range(start, min(start + 2000, messages))]
        await store.append_many(box.id, items)
    await store.close()

trio.run(main, sys.argv[2], int(sys.argv[3]))
"""

RUN = r"""
import gc, json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
import trio
from proxy.gateway.imapd._index import MailboxIndex
from proxy.gateway.imapd._view import SelectedView
from proxy.gateway.imapd.hub import Hub
from proxy.store import FlagUpdate, open_store

path, views, rounds, what = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]


async def load():
    store = await open_store(path)
    account = await store.ensure_account("bench", "user")
    box = await store.get_mailbox(account.id, "Big")
    snap = await MailboxIndex().snapshot(store, box)
    await store.close()
    return box, snap

box, snap = trio.run(load)
new_api = not hasattr(SelectedView, "seqs_for")

# the two trees' interfaces for what the command handlers ask of a view
if new_api:
    def seqs_all(v): return v.messages.seqs_in([(1, v.exists)])
    def seqs_uid(v, lo, hi): return v.messages.seqs_in_uid_ranges([(lo, hi)])
    def uids_at(v, seqs): return v.messages.uids_at(seqs)
    def metas_at(v, seqs): return v.messages.metas_at(seqs)
    def line(v, seq, meta): return v.fetch_flags_line(seq)
else:
    def seqs_all(v): return v.seqs_for([(1, v.exists)])
    def seqs_uid(v, lo, hi): return v.seqs_for_uids([(lo, hi)])
    def uids_at(v, seqs): return [v.uids[q - 1] for q in seqs]
    def metas_at(v, seqs): return [v.meta[v.uids[q - 1]] for q in seqs]
    def line(v, seq, meta): return v.fetch_flags_line(seq, meta.uid)


def select(hub):
    view = SelectedView(box, [], False, set(), hub)
    hub.subscribe(box.id, view)
    view.load(snap)
    return view


def fetch_flags(view):
    seqs, lines = seqs_all(view), 0
    for start in range(0, len(seqs), 256):
        chunk = seqs[start:start + 256]
        for seq, meta in zip(chunk, metas_at(view, chunk)):
            line(view, seq, meta)
            lines += 1
    return lines


def uid_search(view):
    return len(uids_at(view, seqs_uid(view, 1, view.max_uid)))


def uid_fetch_each(view):
    top = view.max_uid
    return sum(view.seq_of(u) is not None for u in range(1, top + 1, max(top // 1000, 1)))


def timed(fn, *args):
    started = time.thread_time()
    fn(*args)
    return time.thread_time() - started


def cpu_round():
    hub, out = Hub(), {}
    gc.disable()
    started = time.thread_time()
    view = select(hub)
    out["SELECT"] = time.thread_time() - started
    other = select(hub)
    out["FETCH 1:* FLAGS"] = timed(fetch_flags, view)
    out["UID SEARCH UID 1:*"] = timed(uid_search, view)
    out["UID FETCH of 1,000 single UIDs"] = timed(uid_fetch_each, view)
    gone = [meta.uid for meta in snap.metas[::10]]
    started = time.thread_time()
    hub.expunged(box.id, gone, origin=view, body_ids=[])
    for batch in view.expunge_batches(gone):
        view.expunge_lines(batch)
    out["EXPUNGE of every 10th: own lines"] = time.thread_time() - started
    out["EXPUNGE of every 10th: another view's updates"] = timed(other.updates, True)
    changes = [FlagUpdate(m.uid, frozenset({"\\Seen", "\\Flagged"}), snap.modseq + i + 1, True)
               for i, m in enumerate(snap.metas)]
    hub.flags(box.id, changes)
    out["another's flag change to all: one view's updates"] = timed(other.updates, True)
    gc.enable()
    view.close()
    other.close()
    return out


def memory():
    tracemalloc.start()
    hub, held = Hub(), []
    base = tracemalloc.get_traced_memory()[0]
    held = [select(hub) for _ in range(views)]
    out = {"KiB per view after SELECT (tracemalloc)":
           (tracemalloc.get_traced_memory()[0] - base) / views / 1024}
    hub.flags(box.id, [FlagUpdate(m.uid, frozenset({"\\Flagged"}), snap.modseq + i + 1, True)
                       for i, m in enumerate(snap.metas)])
    for view in held:
        view.updates(True)
    out["KiB per view after a flag change to all (tracemalloc)"] = (
        (tracemalloc.get_traced_memory()[0] - base) / views / 1024)
    tracemalloc.stop()
    return out


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def rss():
    gc.collect()
    hub, before = Hub(), resident()
    held = [select(hub) for _ in range(views)]
    gc.collect()
    return {"KiB per view after SELECT (RSS)": (resident() - before) / views / 1024,
            "views": len(held)}


if what == "cpu":
    print(json.dumps([cpu_round() for _ in range(rounds)]))
elif what == "memory":
    print(json.dumps(memory()))
else:
    print(json.dumps(rss()))
"""


def run(tree: pathlib.Path, *args: object) -> object:
    out = subprocess.run([sys.executable, "-c", RUN, str(tree), *map(str, args)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", help="also run this revision (git archive)")
    args = parser.parse_args()
    trees = {"this tree": REPO_ROOT}
    if args.base:
        trees[args.base] = export(args.base)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-view-memory-"))
    try:
        for messages in args.messages:
            store = scratch / f"{messages}.db"
            subprocess.run([sys.executable, "-c", FILL, str(REPO_ROOT), str(store), str(messages)],
                           check=True)
            memory = {label: {} for label in trees}
            cpu: dict[str, list] = {label: [] for label in trees}
            for _ in range(2):   # the trees interleaved: the machine's load hits both alike
                for label, tree in trees.items():
                    memory[label].update(run(tree, store, args.views, 1, "memory"))
                    memory[label].update(run(tree, store, args.views, 1, "rss"))
                    cpu[label] += run(tree, store, args.views, args.rounds, "cpu")
            table = Table(f"{messages} messages, {args.views} views: memory per view (KiB)",
                          ["measure", *trees])
            for key in memory["this tree"]:
                if key != "views":
                    table.add(key, *[memory[label][key] for label in trees])
            print(table.render())
            table = Table(f"{messages} messages: the view's CPU per command (ms of thread CPU, "
                          f"median of {2 * args.rounds} rounds)", ["measure", *trees])
            for key in cpu["this tree"][0]:
                table.add(key, *[median([r[key] for r in cpu[label]]) * 1000 for label in trees])
            print(table.render())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.base:
            shutil.rmtree(trees[args.base], ignore_errors=True)


if __name__ == "__main__":
    main()
