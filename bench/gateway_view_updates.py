"""Benchmark: what one session's change to a whole mailbox costs the *other* sessions of it, in
the gateway's event loop (no network, no store: the hub and the views alone, in-process).

N other views (sessions with the mailbox selected) of a mailbox of M messages; one session sets
a flag on all M (a FLAGS event) and then expunges them (an EXPUNGE event). Measured with the
thread's CPU clock, gc off, median of rounds:
- publish: the publisher's step (the hub hands the event to every view; an EXPUNGE pins the
  bodies each view still shows, RFC 2180 4.1.1), for all N views together;
- one view's updates: the untagged lines one view makes of the event, in total and its longest
  step between two points where the session may yield to the others (the whole call before
  `update_slices` existed);
- the last view's updates: the same, for the last view to apply it (after an EXPUNGE it is the
  one that lets the expunged bodies go, since holds are per event).
Then, in a round of its own under tracemalloc: the memory per view after SELECT and after the
flag change (the views share the changed messages' objects since the ninth session).

Each tree runs in a process of its own (this tree, and `--base REV` exported with `git archive`).
Run: .venv/bin/python bench/gateway_view_updates.py [--messages 10000] [--views 12] [--rounds 5]
                                                  [--base 06750a1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from common import REPO_ROOT, Table, median  # noqa: E402
from gateway_fairness import export

RUN = r"""
import datetime as dt, gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from proxy.gateway.imapd._index import Snapshot
from proxy.gateway.imapd._view import SelectedView
from proxy.gateway.imapd.hub import Hub
from proxy.store import FlagUpdate, Mailbox, MessageMeta

messages, views, rounds = (int(a) for a in sys.argv[2:5])
when = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)
metas = [MessageMeta(u, 1, u, when, 100, frozenset({"\\Seen"}), u, u, None)
         for u in range(1, messages + 1)]


def parts(view):   # the lines in the parts the session may yield between
    if hasattr(view, "update_slices"):
        yield from view.update_slices(True)
    else:
        yield view.updates(True)


def one_round():
    hub, out = Hub(), {}
    others = []
    for _ in range(views):
        view = SelectedView(Mailbox(1, 1, "INBOX", None, 7, 3, 1, 2), [], False, set(), hub)
        hub.subscribe(1, view)
        view.load(Snapshot(1, messages, metas))
        others.append(view)
    gc.disable()
    for kind in ("flags", "expunge"):
        started = time.thread_time()
        if kind == "flags":
            hub.flags(1, [FlagUpdate(u, frozenset({"\\Seen", "\\Deleted"}), messages + u, True)
                          for u in range(1, messages + 1)])
        else:
            hub.expunged(1, list(range(1, messages + 1)), body_ids=list(range(1, messages + 1)))
        out[f"{kind}: publish to {views} views"] = time.thread_time() - started
        steps, last = [], time.thread_time()
        for _ in parts(others[0]):
            now = time.thread_time()
            steps.append(now - last)
            last = now
        out[f"{kind}: one view's updates, total"] = sum(steps)
        out[f"{kind}: one view's updates, longest step"] = max(steps)
        for view in others[1:-1]:
            view.updates(True)
        started = time.thread_time()
        others[-1].updates(True)   # after an expunge: the last to let go frees the bodies
        out[f"{kind}: the last view's updates"] = time.thread_time() - started
    gc.enable()
    return out


def memory():
    # KiB per view (tracemalloc, a round of its own): after SELECT, after the flag change
    import tracemalloc
    tracemalloc.start()
    hub, others = Hub(), []
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(views):
        view = SelectedView(Mailbox(1, 1, "INBOX", None, 7, 3, 1, 2), [], False, set(), hub)
        hub.subscribe(1, view)
        view.load(Snapshot(1, messages, metas))
        others.append(view)
    out = {"KiB per view after SELECT": (tracemalloc.get_traced_memory()[0] - base) / views / 1024}
    hub.flags(1, [FlagUpdate(u, frozenset({"\\Seen", "\\Deleted"}), messages + u, True)
                  for u in range(1, messages + 1)])
    for view in others:
        view.updates(True)
    out["KiB per view after the flag change"] = (
        (tracemalloc.get_traced_memory()[0] - base) / views / 1024)
    tracemalloc.stop()
    return out


print(json.dumps([one_round() for _ in range(rounds)] + [memory()]))
"""


def run(tree, args) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", RUN, str(tree), str(args.messages),
                          str(args.views), str(args.rounds)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", help="also run this revision (git archive)")
    args = parser.parse_args()
    trees = {"this tree": REPO_ROOT}
    if args.base:
        trees[args.base] = export(args.base)
    try:
        results = {label: run(tree, args) for label, tree in trees.items()}
    finally:
        if args.base:
            shutil.rmtree(trees[args.base], ignore_errors=True)
    table = Table(f"Another session's change to all {args.messages} messages, as {args.views} "
                  "other views apply it (ms of thread CPU, median of "
                  f"{args.rounds} rounds)", ["measure", *trees])
    for key in next(iter(results.values()))[0]:
        table.add(key, *[median([r[key] for r in rounds[:-1]]) * 1000
                         for rounds in results.values()])
    print(table.render())
    memory = Table(f"Memory of the {args.views} views (tracemalloc)", ["measure", *trees])
    for key in next(iter(results.values()))[-1]:
        memory.add(key, *[rounds[-1][key] for rounds in results.values()])
    print(memory.render())


if __name__ == "__main__":
    main()
