"""Python calls per relayed POP3 RETR (and IMAP NOOP) in the relay engine's thread: cProfile of
that thread alone, counts only, so two revisions compare on a busy machine.

    .venv/bin/python bench/engine_calls.py [--messages 300] [--rounds 3] [--noops 3000]
                                           [--sessions N] [--tls] [--base REV] [--top 30]
                                           [--opcodes]

The proxy (this tree's, or `--base REV` exported as bench/ab_relay.py does) runs with its
`Engine._run_thread` wrapped in a `cProfile.Profile()`; one warm-up download, then `--rounds`
POP3 downloads (USER/PASS, STAT, UIDL, RETR of every message, QUIT, every byte checked) and one
IMAP session of `--noops` NOOPs; then SIGTERM, and the thread's profile is printed: calls per
RETR (the engine's calls of the download rounds over their RETRs: logins and QUITs of the
engine path are in it too, so compare at the same `--messages`) and the top functions by calls.
`--opcodes`: instead of the profile, the Python bytecodes the thread executes (a trace
function with `f_trace_opcodes`; the `--top` functions by bytecodes too), per RETR (or per
NOOP with `--rounds 0`: the session's login included): a count of the interpreter's work
that, unlike the CPU time on a loaded machine, does not depend on the load (the C work inside
calls is not in it). `--sessions N` (with `--rounds 0 --noops 0`): N IMAP sessions (LOGIN,
SELECT INBOX, LOGOUT) instead, counted per session. `--tls`: the IMAP rows over implicit TLS
from the client (the proxy relays in clear to Dovecot), the POP3 rounds stay plain.
Needs root, like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import pathlib
import pstats
import signal
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ab_relay import export  # noqa: E402
from clients import Imap, client_tls_context, imap_session, pop3_download  # noqa: E402
from common import REPO_ROOT, Env, QuietProxyProcess, make_mailbox, tls_listener  # noqa: E402

PROFILED = (
    "import cProfile, sys; sys.path.insert(0, {root!r}); sys.argv[0] = 'mailproxy'\n"
    "import proxy.relay.engine as engine\n"
    "run = engine.Engine._run_thread\n"
    "def profiled(self):\n"
    "    profile = cProfile.Profile(); profile.enable()\n"
    "    try:\n        run(self)\n"
    "    finally:\n        profile.disable(); profile.dump_stats({out!r})\n"
    "engine.Engine._run_thread = profiled\n"
    "{opcodes}"
    "from proxy.cli import main\n"
    "import threading\n"
    "try:\n    main()\n"
    "finally:\n"   # (the thread is a daemon: let it write its profile first)
    "    [t.join(30) for t in threading.enumerate() if t.name == 'relay-engine']\n")


OPCODES = (   # replaces `profiled` when --opcodes: bytecodes executed by the thread
    "import collections\n"
    "def profiled(self):\n"
    "    count = collections.Counter()\n"
    "    def tracer(frame, event, arg):\n"
    "        frame.f_trace_opcodes = True\n"
    "        if event == 'opcode':\n"
    "            code = frame.f_code\n"
    "            count[code.co_filename, code.co_firstlineno, code.co_name] += 1\n"
    "        return tracer\n"
    "    sys.settrace(tracer)\n"
    "    try:\n        run(self)\n"
    "    finally:\n"
    "        sys.settrace(None)\n"
    "        open({out!r}, 'w').write('\\n'.join(f'{{n}} {{f}}:{{l}} {{c}}' for (f, l, c), n"
    " in count.most_common()))\n"
    "engine.Engine._run_thread = profiled\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--noops", type=int, default=0, help="also an IMAP session of N NOOPs")
    parser.add_argument("--base", default=None, help="profile this revision instead of this tree")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--opcodes", action="store_true",
                        help="count the thread's bytecodes instead of profiling its calls")
    parser.add_argument("--sessions", type=int, default=0,
                        help="N IMAP sessions (LOGIN, SELECT INBOX, LOGOUT), per session")
    parser.add_argument("--tls", action="store_true", help="IMAP over implicit TLS")
    args = parser.parse_args()
    root = export(args.base) if args.base else REPO_ROOT
    out = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-calls-")) / "engine.prof"
    mailbox = make_mailbox(args.messages)
    with Env("calls", tls=args.tls) as env:
        user, password = env.user_with(mailbox)
        listeners = [{"name": "pop3", "protocol": "pop3"},
                     tls_listener(env, "imap", "imap") if args.tls
                     else {"name": "imap", "protocol": "imap"}]
        ctx = client_tls_context(str(env.ca_file)) if args.tls else None
        probe = env.proxy(listeners, metrics=True, extra={"relay": {"engine": "epoll"}})
        probe.stop()   # only its config was wanted
        opcodes = OPCODES.format(out=str(out)) if args.opcodes else ""
        command = [sys.executable, "-c", PROFILED.format(root=str(root), out=str(out),
                                                         opcodes=opcodes),
                   "--log-level", "WARNING", "serve", "--config", str(probe.config_path)]
        proxy = QuietProxyProcess(probe.config, probe.tmp_path.with_name("profiled"),
                                  command=command)
        env.on_close(proxy.stop)
        pop3_download(proxy.port("pop3"), user, password)   # warm-up
        for _ in range(args.rounds):
            count, _, digest, _ = pop3_download(proxy.port("pop3"), user, password)
            if digest != mailbox.sha256:
                raise SystemExit("POP3 sha256 mismatch")
        if args.noops:
            imap = Imap(proxy.port("imap"), ctx)
            imap.login(user, password)
            imap.command(b"SELECT INBOX")
            imap.noop_rtt_ns(args.noops)
            imap.logout()
        for _ in range(args.sessions):
            imap_session(proxy.port("imap"), user, password, ctx)
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
    retrs = (args.rounds + 1) * args.messages
    if args.opcodes:
        rows = [line.split(" ", 1) for line in out.read_text().splitlines()]
        total = sum(int(n) for n, _ in rows)
        ops = retrs if args.rounds else args.noops or args.sessions
        for n, where in rows[:args.top]:
            print(f"{int(n) / ops:8.1f} {where.replace(str(root) + '/', '')}")
        per = (f"{total / retrs:.1f} per RETR over {retrs} RETRs" if args.rounds else
               f"{total / args.noops:.1f} per NOOP over {args.noops} NOOPs (the login's included)"
               if args.noops else f"{total / args.sessions:.1f} per IMAP session over "
               f"{args.sessions} sessions")
        per += " over TLS" if args.tls else ""
        print(f"engine thread of {args.base or 'this tree'}: {total} bytecodes, {per}")
        return
    stats = pstats.Stats(str(out))
    print(f"engine thread of {args.base or 'this tree'}: {stats.total_calls} calls, "
          f"{stats.total_calls / retrs:.1f} per RETR over {retrs} RETRs"
          + (f" and {args.noops} NOOPs" if args.noops else "") + f"; pstats in {out}")
    stats.sort_stats("ncalls").print_stats(args.top)


if __name__ == "__main__":
    main()
