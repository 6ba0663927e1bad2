"""Where a relayed session's CPU goes: cProfile with a CPU clock around the whole proxy process.

    .venv/bin/python bench/session_profile.py [--sessions 1000] [--protocol imap|pop3] [--base REV]
                                              [--top 40] [--out FILE] [--early] [--threads]

The proxy (this tree's, or `--base REV` exported as bench/ab_relay.py does) runs under
`cProfile.Profile(time.process_time)`, so time spent waiting in epoll is not counted and a
function's share is its share of the CPU. After 50 sessions of warm-up, `--sessions` sessions
run one after the other (IMAP: connect, LOGIN, SELECT INBOX, LOGOUT; POP3: USER/PASS, STAT,
QUIT); then the proxy is stopped and the profile printed: Python function calls per session
(load-independent, so two revisions compare well on a busy machine), the top functions by own
and by inclusive CPU. The profiler makes call-heavy code look heavier: CPU per session is about
4x the unprofiled figure (bench/ab_relay.py measures that one). Needs root, like the other
relay benchmarks.

`--noops N` (IMAP): instead, one session logs in, selects INBOX and sends N NOOPs, and every
thread of the proxy is profiled on its own (the relay engine's thread is where a relayed NOOP
runs); printed per thread: Python function calls per NOOP and the top functions by calls.

`--threads`: the sessions' run profiled that way too (each thread on its own clock), so the
relay engine's thread, which accepts and logs in most IMAP sessions, is in the counts; printed
per thread: calls per session (warm-up and start-up included). `--early`: the upstream's
services with `connect_early: true`.
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
from clients import Imap, Pop3, imap_session  # noqa: E402
from common import REPO_ROOT, Env, QuietProxyProcess, cpu_seconds, small_mailbox  # noqa: E402

PROFILED = ("import cProfile, sys, time; sys.path.insert(0, {root!r}); sys.argv[0] = 'mailproxy'\n"
            "profile = cProfile.Profile(time.process_time)\n"
            "from proxy.cli import main\n"
            "profile.enable()\n"
            "try:\n    main()\nfinally:\n    profile.disable(); profile.dump_stats({out!r})\n")
# every thread under its own profiler (threading.Thread.run wrapped), each dumped to OUT.<name>
PROFILED_THREADS = (
    "import cProfile, sys, threading, time; sys.path.insert(0, {root!r}); sys.argv[0] = 'mailproxy'\n"
    "run = threading.Thread.run\n"
    "def profiled(self):\n"
    "    profile = cProfile.Profile(time.thread_time)\n"
    "    profile.enable()\n"
    "    try:\n        run(self)\n"
    "    finally:\n"
    "        profile.disable(); profile.dump_stats({out!r} + '.' + self.name)\n"
    "threading.Thread.run = profiled\n"
    "from proxy.cli import main\n"
    "profile = cProfile.Profile(time.thread_time)\n"
    "profile.enable()\n"
    "try:\n    main()\n"
    "finally:\n"
    "    profile.disable(); profile.dump_stats({out!r} + '.main')\n"
    "    [t.join(10) for t in threading.enumerate() if t is not threading.current_thread()]\n")
WARM_UP = 50


def pop3_session(port: int, user: str, password: str) -> None:
    client = Pop3(port)
    try:
        for line in (b"USER " + user.encode(), b"PASS " + password.encode(), b"STAT", b"QUIT"):
            client.command(line)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--protocol", choices=("imap", "pop3"), default="imap")
    parser.add_argument("--base", default=None, help="profile this revision instead of this tree")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="keep the pstats file")
    parser.add_argument("--noops", type=int, default=0, help="profile N NOOPs of one session")
    parser.add_argument("--threads", action="store_true", help="profile every thread on its own")
    parser.add_argument("--early", action="store_true", help="connect_early on the upstream")
    args = parser.parse_args()
    root = export(args.base) if args.base else REPO_ROOT
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-profile-")) / "proxy.prof"
    if args.noops:
        return noops(root, out, args.noops, args.top, args.base)
    session = imap_session if args.protocol == "imap" else pop3_session
    with Env("profile") as env:
        user, password = env.user_with(small_mailbox(10))
        extra = None
        if args.early:
            early = {"tls": "none", "connect_early": True}
            extra = {"upstreams": {"main": {
                "host": "127.0.0.1", "imap": {"port": env.dovecot.imap_port, **early},
                "pop3": {"port": env.dovecot.pop3_port, **early}}}}
        probe = env.proxy([{"name": "main", "protocol": args.protocol}], metrics=True,
                          extra=extra)
        probe.stop()   # only its config and port were wanted
        script = PROFILED_THREADS if args.threads else PROFILED
        command = [sys.executable, "-c", script.format(root=str(root), out=str(out)),
                   "--log-level", "WARNING", "serve", "--config", str(probe.config_path)]
        proxy = QuietProxyProcess(probe.config, probe.tmp_path.with_name("profiled"),
                                  command=command)
        env.on_close(proxy.stop)
        port = proxy.port("main")
        for _ in range(WARM_UP):
            session(port, user, password)
        cpu = cpu_seconds(proxy.pid)
        for _ in range(args.sessions):
            session(port, user, password)
        cpu = cpu_seconds(proxy.pid) - cpu
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
    # start-up's ~100,000 calls are spread over every session: compare runs of 400 or more
    total = args.sessions + WARM_UP
    if args.threads:
        print(f"{args.protocol} sessions through {args.base or 'this tree'}"
              f"{' (connect_early)' if args.early else ''}: {1000 * cpu / args.sessions:.2f} ms "
              f"of CPU per session profiled")
        for dump in sorted(out.parent.glob(out.name + ".*")):
            stats = pstats.Stats(str(dump))
            print(f"thread {dump.suffix[1:]}: {stats.total_calls / total:.1f} Python function "
                  f"calls per session")
            if stats.total_calls > 10 * total:
                stats.sort_stats("ncalls").print_stats(args.top)
        return
    stats = pstats.Stats(str(out))   # (written by the proxy as it stopped)
    print(f"{args.protocol} sessions through {args.base or 'this tree'}: "
          f"{1000 * cpu / args.sessions:.2f} ms of CPU per session profiled, "
          f"{stats.total_calls / total:.0f} Python function calls per session; pstats in {out}")
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def noops(root: pathlib.Path, out: pathlib.Path, count: int, top: int, base: str | None) -> None:
    with Env("profile") as env:
        user, password = env.user_with(small_mailbox(10))
        probe = env.proxy([{"name": "main", "protocol": "imap"}], metrics=True)
        probe.stop()   # only its config and port were wanted
        command = [sys.executable, "-c", PROFILED_THREADS.format(root=str(root), out=str(out)),
                   "--log-level", "WARNING", "serve", "--config", str(probe.config_path)]
        proxy = QuietProxyProcess(probe.config, probe.tmp_path.with_name("profiled"),
                                  command=command)
        env.on_close(proxy.stop)
        imap = Imap(proxy.port("main"))
        try:
            imap.login(user, password)
            imap.command(b"SELECT INBOX")
            cpu = cpu_seconds(proxy.pid)
            for _ in range(count):
                imap.command(b"NOOP")
            cpu = cpu_seconds(proxy.pid) - cpu
            imap.logout()
        finally:
            imap.close()
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
    print(f"{count} NOOPs through {base or 'this tree'}: {1e6 * cpu / count:.0f} us of CPU "
          f"per NOOP profiled")
    for dump in sorted(out.parent.glob(out.name + ".*")):
        stats = pstats.Stats(str(dump))
        print(f"thread {dump.suffix[1:]}: {stats.total_calls / count:.1f} Python function calls "
              f"per NOOP (start-up and login included)")
        if stats.total_calls > 10 * count:
            stats.sort_stats("ncalls").print_stats(top)


if __name__ == "__main__":
    main()
