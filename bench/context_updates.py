"""Benchmark: what RFC 5267 UPDATE contexts (CONTEXT=SEARCH/SORT, issue 17) cost the gateway per
change of the mailbox, A/B against another revision in one run.

    .venv/bin/python bench/context_updates.py [--base REV] [--messages 2000] [--rounds 5]
                                              [--changes 200] [--appends 40]

Two gateways run as processes of their own, one from `--base` (default `main`, exported with
`git archive` as bench/ab_relay.py does) and one from this tree, each with its own SQLite store
filled from one private Dovecot's POP3 mailbox. A round opens two sessions on INBOX: B changes a
flag (`UID STORE u +FLAGS (\\Flagged)`, then `-FLAGS`, on messages spread over the mailbox) or
APPENDs a message, and after each change A sends NOOP, where it is told of the change (and gets
its ADDTO/REMOVEFROM). Three kinds of rounds are interleaved (base, this, this with the 10 live
contexts of `CONTEXTS` open in A: SEARCH and SORT, flag, header, body and size criteria):

    CPU per change: the gateway process's CPU (every thread, /proc schedstat) over the round
    divided by the changes (B's STORE plus A's NOOP; B's APPEND plus A's NOOP).

The machine is shared, so only CPU per operation and ratios inside one run mean anything; the
load average is printed with each round. "this" against "base" is the cost of the change with
no context open (the view's bookkeeping); "this+10" against "this" is what ten contexts add.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ab_relay import RUN_FROM, cpu_seconds, export  # noqa: E402
from clients import Imap  # noqa: E402
from common import REPO_ROOT, Env, QuietProxyProcess, interleave, make_mailbox, median  # noqa: E402

CONTEXTS = [b"SEARCH RETURN (UPDATE COUNT) UNSEEN", b"UID SEARCH RETURN (UPDATE) FLAGGED",
            b"UID SEARCH RETURN (UPDATE COUNT) UNDELETED UNFLAGGED",
            b'UID SEARCH RETURN (UPDATE COUNT) SUBJECT "a"',
            b'UID SEARCH RETURN (UPDATE COUNT) BODY "abc"',
            b"UID SEARCH RETURN (UPDATE COUNT) OR FLAGGED ANSWERED",
            b"UID SORT RETURN (UPDATE COUNT) (REVERSE DATE) UTF-8 UNDELETED",
            b"UID SORT RETURN (UPDATE COUNT PARTIAL 1:50) (SUBJECT) UTF-8 FLAGGED",
            b"SORT RETURN (UPDATE COUNT) (FROM) UTF-8 NOT FLAGGED",
            b"UID SEARCH RETURN (UPDATE COUNT) LARGER 5000"]
NEW_MAIL = (b"From: New <new@example.org>\r\nTo: bench@example.org\r\nSubject: a new one\r\n"
            b"Date: Sun, 6 Dec 2026 08:00:00 +0000\r\n\r\n" + b"abc def\r\n" * 200)


def gateway_from(env: Env, root: pathlib.Path | None, name: str) -> QuietProxyProcess:
    """A gateway over env's Dovecot POP3, from `root` (an exported revision; None: this tree)."""
    proc = env.proxy([{"name": "imap", "protocol": "imap", "mode": "gateway"}],
                     extra={"gateway": {"store": str(env.root / f"{name}.db"),
                                        "poll_interval": "600s"}})
    if root is None:
        return proc  # type: ignore[return-value]
    proc.stop()
    command = [sys.executable, "-c", RUN_FROM.format(root=str(root)), "--log-level", "WARNING",
               "serve", "--config", str(proc.config_path)]
    base = QuietProxyProcess(proc.config, proc.tmp_path.with_name(proc.tmp_path.name + "-base"),
                             command=command)
    env.on_close(base.stop)
    return base


def ingested(port: int, user: str, password: str, messages: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        imap = Imap(port)
        imap.login(user, password)
        lines = imap.command(b"SELECT INBOX")
        imap.command(b"LOGOUT")
        if any(line == b"* %d EXISTS" % messages for line in lines):
            return
    raise SystemExit("the gateway did not ingest the mailbox")


def round_(port: int, pid: int, user: str, password: str, contexts: bool, changes: int,
           appends: int, messages: int) -> dict[str, float]:
    a, b = Imap(port), Imap(port)
    for imap in (a, b):
        imap.login(user, password)
        imap.command(b"SELECT INBOX")
    if contexts:
        for command in CONTEXTS:
            a.command(command)
    step = max(1, messages // changes)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    for n in range(changes):
        uid = 1 + (n * step) % messages
        b.command(b"UID STORE %d %sFLAGS.SILENT (\\Flagged)" % (uid, b"+" if n % 2 == 0 else b"-"))
        a.command(b"NOOP")
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    for _ in range(appends):
        b.command(b"APPEND INBOX {%d+}\r\n" % len(NEW_MAIL) + NEW_MAIL)
        a.command(b"NOOP")
    c2, t2 = cpu_seconds(pid), time.perf_counter()
    b.command(b"STORE %d:* +FLAGS.SILENT (\\Deleted)" % (messages + 1))   # back to the start
    b.command(b"EXPUNGE")
    b.command(b"STORE 1:* -FLAGS.SILENT (\\Flagged)")
    for imap in (a, b):
        imap.command(b"LOGOUT")
    return {"flag_cpu": (c1 - c0) / changes * 1e6, "flag_wall": (t1 - t0) / changes * 1e6,
            "append_cpu": (c2 - c1) / appends * 1e6, "append_wall": (t2 - t1) / appends * 1e6,
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="revision to compare with (main)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--appends", type=int, default=40)
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    print(f"context updates: {args.base} vs this tree ({head}), "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {args.messages} messages, "
          f"load average {os.getloadavg()}", flush=True)
    base_root = export(args.base)
    try:
        with Env("ctx") as env:
            user, password = env.user_with(make_mailbox(args.messages))
            procs = {"base": gateway_from(env, base_root, "base"), "this": gateway_from(env, None, "this")}
            for proc in procs.values():
                ingested(proc.port("imap"), user, password, args.messages)

            def runner(label: str, contexts: bool):
                proc = procs[label]
                return lambda: round_(proc.port("imap"), proc.pid, user, password, contexts,
                                      args.changes, args.appends, args.messages)

            results = interleave(args.rounds, {"base": runner("base", False),
                                               "this": runner("this", False),
                                               "this+10": runner("this", True)})
            for label, rounds in results.items():
                cells = [f"{key} {median([r[key] for r in rounds]):.0f} "
                         f"{sorted(round(r[key]) for r in rounds)}"
                         for key in ("flag_cpu", "append_cpu", "flag_wall", "append_wall")]
                loads = [round(r["load"], 1) for r in rounds]
                print(f"{label:8} (us per change) " + "; ".join(cells) + f"; load {loads}")
            for key in ("flag_cpu", "append_cpu"):
                base, this, ten = (median([r[key] for r in results[k]])
                                   for k in ("base", "this", "this+10"))
                print(f"{key}: this/base {this / base:.2f}x, this+10/this {ten / this:.2f}x")
    finally:
        shutil.rmtree(base_root, ignore_errors=True)


if __name__ == "__main__":
    main()
