"""A/B of the relay's per-command cost: this tree's mailproxy against another revision's, in one run.

    .venv/bin/python bench/ab_relay.py [--base REV] [--rounds 7] [--noops 2000] [--messages 300]
                                       [--sessions 200] [--warm 0,2,early] [--base-warm early]
                                       [--only SEQ CONC POP3LOGIN NOOP STORM TLSSTORM POP3 FETCH] [--tls]
                                       [--splice 65536,off] [--size BYTES] [--handshake-threads 0,1]

On a shared, loaded machine wall-clock figures move with the load, so the two proxies run side by
side against one private Dovecot, their rounds interleaved (direct, base, this, direct, base, ...),
and the figure that matters is the proxy's **CPU per operation** from /proc (the CPU time of every
thread of the proxy over the round, divided by the operations): per IMAP session (connect, LOGIN,
SELECT INBOX, LOGOUT) run one after the other (SEQ) and from 16 threads (CONC), per POP3 login
session (USER/PASS, STAT, QUIT; POP3LOGIN), per relayed NOOP, per MB of a POP3 download
(USER/PASS, STAT, UIDL, RETR all, QUIT) and per MB of a bulk `UID FETCH 1:* BODY.PEEK[]`.
Sessions/s, latency (NOOP p50) and throughput are printed too, with the load average.
STORM (a login storm): NOOP p50/p99 of an established session while 16 other clients (two
processes of 8 threads, so the storm does not share the measuring client's GIL) log in and out
(LOGIN, SELECT INBOX, LOGOUT) through the same proxy as fast as they can; the storm's sessions/s
is printed beside them. It shows what logins handled by trio's thread cost relayed commands.
TLSSTORM (with --tls): the same, the storm over implicit TLS and the measured session plain (a
third listener, plain IMAP), with the proxy's CPU per storm session: what TLS handshakes cost the
relayed sessions of the engine (issue 16). `--handshake-threads 0,1,2` runs one proxy of this tree
per relay.tls_handshake_threads value.
`--tls`: every row over implicit TLS from the client (both proxies and Dovecot serve one trustme
certificate; the proxies relay in clear to Dovecot's plain ports; "direct" is Dovecot's TLS port).

The base revision (default `main`) is exported with `git archive` into a temporary directory and
run from there (`python -c ... runpy.run_module("proxy")` with that directory first on sys.path),
with the same config as this tree's proxy. `--engines tasks,epoll` runs one proxy of this tree
per `relay.engine` value (the base gets no `relay:` key, which older revisions do not know;
`--base-engines tasks,epoll` does the same for a base that knows it). `--splice 16384,off` runs one
proxy of this tree per `relay.splice_min_literal` value (`off`: null, never splice); `--size N`
makes every message of the mailbox N bytes (default: make_mailbox's mix, about 40 KB average).
Needs root, like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from clients import Imap, Pop3, client_tls_context, imap_session, pop3_download  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    Env,
    Mailbox,
    QuietProxyProcess,
    _message,
    interleave,
    make_mailbox,
    median,
    percentile,
    tls_listener,
)

RUN_FROM = ("import runpy, sys; {prefix}sys.path.insert(0, {root!r}); sys.argv[0] = 'mailproxy'; "
            "runpy.run_module('proxy', run_name='__main__', alter_sys=True)")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process `pid`, in seconds: the first field of
    /proc/PID/task/TID/schedstat (nanoseconds on a CPU; /proc/PID/stat counts clock ticks, too
    coarse for one round)."""
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


def thread_cpu(pid: int) -> dict[int, int]:
    """CPU nanoseconds of each thread of process `pid` (as cpu_seconds, by thread id)."""
    times = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that just ended
    return times


def export(rev: str) -> pathlib.Path:
    """`rev` of this repository in a fresh directory (`git archive`, so no worktree is touched)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-ab-"))
    root.chmod(0o755)
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "proxy"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def proxy_from(env: Env, root: pathlib.Path | None, listeners: list[dict],
               engine: str | None = None, switch: str | None = None,
               warm: str = "0", splice: str = "", handshake_threads: str = "") -> QuietProxyProcess:
    """A proxy like env.proxy()'s, run from `root` (None: this tree) with `relay.engine` (a base
    revision must know the key) and sys.setswitchinterval(`switch`) first when given; `warm`:
    N for `warm_pool: {size: N}` on the upstream's IMAP and POP3 services (0: none), `early`
    for `connect_early: true` there."""
    extra: dict | None = {"relay": {"engine": engine}} if engine else None
    if splice:   # relay.splice_min_literal (`off`: null)
        relay = {**(extra or {}).get("relay", {}),
                 "splice_min_literal": None if splice == "off" else int(splice)}
        extra = {**(extra or {}), "relay": relay}
    if handshake_threads:   # relay.tls_handshake_threads
        relay = {**(extra or {}).get("relay", {}), "tls_handshake_threads": int(handshake_threads)}
        extra = {**(extra or {}), "relay": relay}
    if warm != "0":
        pool: dict = {"tls": "none"}
        pool.update({"connect_early": True} if warm == "early" else
                    {"warm_pool": {"size": int(warm)}})
        extra = {**(extra or {}), "upstreams": {"main": {
            "host": "127.0.0.1", "imap": {"port": env.dovecot.imap_port, **pool},
            "pop3": {"port": env.dovecot.pop3_port, **pool}}}}
    if root is None and switch is None:
        return env.proxy(listeners, metrics=True, extra=extra)  # type: ignore[return-value]
    probe = env.proxy(listeners, metrics=True, extra=extra)  # for its config; replaced below
    probe.stop()
    prefix = f"sys.setswitchinterval({float(switch)}); " if switch else ""
    command = [sys.executable, "-c", RUN_FROM.format(root=str(root or REPO_ROOT), prefix=prefix),
               "--log-level", "WARNING", "serve", "--config", str(probe.config_path)]
    proc = QuietProxyProcess(probe.config, probe.tmp_path.with_name(probe.tmp_path.name + "-base"),
                             command=command)
    env.on_close(proc.stop)
    return proc


def noop_round(port: int, user: str, password: str, count: int, pid: int | None,
               tls=None) -> dict:
    imap = Imap(port, tls)
    imap.login(user, password)
    imap.command(b"SELECT INBOX")
    imap.noop_rtt_ns(200)
    c0 = cpu_seconds(pid) if pid else 0.0
    samples = sorted(imap.noop_rtt_ns(count))
    cpu = (cpu_seconds(pid) - c0) / count * 1e6 if pid else float("nan")
    imap.logout()
    return {"p50_us": percentile(samples, 0.5) / 1000, "cpu": cpu}


def pop3_round(port: int, user: str, password: str, expected: str, pid: int | None,
               tls=None) -> dict:
    c0 = cpu_seconds(pid) if pid else 0.0
    _, total, digest, elapsed = pop3_download(port, user, password, tls)
    if digest != expected:
        raise SystemExit(f"POP3 sha256 mismatch on port {port}")
    cpu = (cpu_seconds(pid) - c0) / (total / 1e6) * 1e3 if pid else float("nan")
    return {"mbps": total / elapsed / 1e6, "cpu": cpu}


def fetch_round(port: int, user: str, password: str, expected: str, pid: int | None,
                tls=None) -> dict:
    imap = Imap(port, tls)
    imap.login(user, password)
    imap.command(b"SELECT INBOX")
    c0, t0 = (cpu_seconds(pid) if pid else 0.0), time.perf_counter()
    _, total, digest = imap.fetch_all()
    elapsed = time.perf_counter() - t0
    cpu = (cpu_seconds(pid) - c0) / (total / 1e6) * 1e3 if pid else float("nan")
    imap.logout()
    if digest != expected:
        raise SystemExit(f"FETCH sha256 mismatch on port {port}")
    return {"mbps": total / elapsed / 1e6, "cpu": cpu}


def sessions_round(port: int, session, count: int, threads: int, pid: int | None) -> dict:
    """`count` sessions (`session(port)`) from `threads` threads: sessions/s and CPU ms each."""
    per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(n):
                session(port)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in per]
    c0, t0 = (cpu_seconds(pid) if pid else 0.0), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    cpu = (cpu_seconds(pid) - c0) / count * 1e3 if pid else float("nan")
    return {"rate": count / elapsed, "cpu": cpu}


STORM_PROCESSES, STORM_THREADS = 2, 8


def _storm(port: int, user: str, password: str, stop, done, tls) -> None:
    """A storm process: STORM_THREADS threads each running IMAP sessions back to back until
    `stop` is set, counting them in `done`."""

    def loop() -> None:
        while not stop.is_set():
            imap_session(port, user, password, tls)
            with done.get_lock():
                done.value += 1

    threads = [threading.Thread(target=loop) for _ in range(STORM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def storm_round(port: int, user: str, password: str, count: int, tls=None,
                noop_port: int | None = None, noop_tls=None, pid: int | None = None) -> dict:
    """NOOP round trips of one established session (through `noop_port` if given, else `port`)
    while the storm runs through `port`; with `pid`, the proxy's CPU per storm session (ms)."""
    imap = Imap(noop_port, noop_tls) if noop_port is not None else Imap(port, tls)
    imap.login(user, password)
    imap.command(b"SELECT INBOX")
    imap.noop_rtt_ns(200)
    fork = multiprocessing.get_context("fork")   # (the ssl context is inherited, not pickled)
    stop, done = fork.Event(), fork.Value("q", 0)
    storm = [fork.Process(target=_storm, args=(port, user, password, stop, done, tls))
             for _ in range(STORM_PROCESSES)]
    for proc in storm:
        proc.start()
    try:
        deadline = time.monotonic() + 60
        while done.value < STORM_PROCESSES * STORM_THREADS:   # every storm client under way
            if time.monotonic() > deadline or not all(p.is_alive() for p in storm):
                raise SystemExit(f"login storm on port {port} did not start")
            time.sleep(0.01)
        d0, t0, c0 = done.value, time.perf_counter(), cpu_seconds(pid) if pid else 0.0
        threads0 = thread_cpu(pid) if pid else {}
        samples = sorted(imap.noop_rtt_ns(count))
        logins = done.value - d0
        rate = logins / (time.perf_counter() - t0)
        cpu = (cpu_seconds(pid) - c0) / logins * 1e3 if pid and logins else float("nan")
        threads1 = thread_cpu(pid) if pid else {}
        busiest = sorted((threads1[t] - threads0.get(t, 0) for t in threads1), reverse=True)
        # the busiest thread (the engine's in a TLS storm), the second (a handshake thread)
        split = [ns / 1e6 / logins if logins else float("nan") for ns in (busiest + [0, 0])[:2]]
    finally:
        stop.set()
        for proc in storm:
            proc.join(60)
    if any(proc.exitcode != 0 for proc in storm):
        raise SystemExit(f"login storm on port {port} failed: {[p.exitcode for p in storm]}")
    imap.logout()
    return {"p50_us": percentile(samples, 0.5) / 1000, "p99_us": percentile(samples, 0.99) / 1000,
            "logins": rate, "cpu": cpu, "thread1": split[0], "thread2": split[1]}


def pop3_login(port: int, user: str, password: str, tls=None) -> None:
    pop = Pop3(port, tls)
    try:
        pop.command(b"USER " + user.encode())
        pop.command(b"PASS " + password.encode())
        pop.command(b"STAT")
        pop.command(b"QUIT")
    finally:
        pop.sock.close()


RUNS = ("SEQ", "CONC", "POP3LOGIN", "NOOP", "STORM", "TLSSTORM", "POP3", "FETCH")
SPEED = {"SEQ": ("rate", "ms CPU per session"), "CONC": ("rate", "ms CPU per session"),
         "POP3LOGIN": ("rate", "ms CPU per session"), "NOOP": ("p50_us", "us CPU per NOOP"),
         "STORM": ("p50_us", ""), "TLSSTORM": ("p50_us", "ms CPU per storm session"),
         "POP3": ("mbps", "ms CPU per MB"),
         "FETCH": ("mbps", "ms CPU per MB")}
# printed as medians beside the speed
EXTRA = {"STORM": ("p99_us", "logins"), "TLSSTORM": ("p99_us", "logins", "thread1", "thread2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="revision to compare with (main)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--noops", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=200, help="sessions per SEQ/CONC round")
    parser.add_argument("--only", nargs="*", choices=RUNS, default=list(RUNS))
    parser.add_argument("--tls", action="store_true", help="implicit TLS from the client")
    parser.add_argument("--engines", default="",
                        help="comma-separated relay.engine values for this tree (default: its "
                             "default); ENGINE:SECONDS also sets sys.setswitchinterval(SECONDS)")
    parser.add_argument("--warm", default="",
                        help="comma-separated warm_pool sizes for this tree's proxies (0: off; "
                             "`early`: connect_early), one proxy each (default: one proxy, off)")
    parser.add_argument("--base-engines", default="",
                        help="the same for the base (a revision that knows `relay.engine`)")
    parser.add_argument("--splice", default="",
                        help="comma-separated relay.splice_min_literal values for this tree's "
                             "proxies (bytes, or `off`), one proxy each (default: its default)")
    parser.add_argument("--size", type=int, default=0,
                        help="every message this many bytes (default: the usual mix)")
    parser.add_argument("--handshake-threads", default="",
                        help="comma-separated relay.tls_handshake_threads values for this tree's "
                             "proxies, one proxy each (default: its default)")
    parser.add_argument("--base-warm", default="0",
                        help="the base's warm_pool size, or `early` (connect_early), as --warm")
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "proxy"],
                           capture_output=True, text=True).stdout.strip()
    tls = " over TLS" if args.tls else ""
    print(f"A/B {args.base} vs this tree{tls} ({head}{' + uncommitted' if dirty else ''}), "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {os.getloadavg()}")
    base_root = export(args.base)
    mailbox = make_mailbox(args.messages) if not args.size else Mailbox(
        [_message(random.Random(i), i, args.size) for i in range(1, args.messages + 1)])
    try:
        with Env("ab", tls=args.tls) as env:
            user, password = env.user_with(mailbox)
            if args.tls:
                listeners = [tls_listener(env, "imap", "imap"), tls_listener(env, "pop3", "pop3"),
                             {"name": "plain", "protocol": "imap"}]   # (TLSSTORM's NOOPs)
                ctx = client_tls_context(str(env.ca_file))
                direct = (env.dovecot.imaps_port, env.dovecot.pop3s_port, None,
                          env.dovecot.imap_port)
            else:
                listeners = [{"name": "imap", "protocol": "imap"}, {"name": "pop3", "protocol": "pop3"}]
                ctx, direct = None, (env.dovecot.imap_port, env.dovecot.pop3_port, None, None)
            procs = {}
            for label in [e for e in args.base_engines.split(",") if e] or [""]:
                engine, _, switch = label.partition(":")
                procs[f"base-{label}" if label else "base"] = proxy_from(
                    env, base_root, listeners, engine or None, switch or None, args.base_warm)
            for label in [e for e in args.engines.split(",") if e] or [""]:
                engine, _, switch = label.partition(":")
                for warm in [w for w in args.warm.split(",") if w] or ["0"]:
                    for splice in [v for v in args.splice.split(",") if v] or [""]:
                        for threads in [t for t in args.handshake_threads.split(",") if t] or [""]:
                            name = "-".join(filter(None, ["this", label, (
                                "early" if warm == "early" else f"warm{warm}") if args.warm else "",
                                f"splice{splice}" if splice else "",
                                f"hs{threads}" if threads else ""]))
                            procs[name] = proxy_from(env, None, listeners, engine or None,
                                                     switch or None, warm, splice, threads)
            ports = {"direct": direct}
            for label, proc in procs.items():
                ports[label] = (proc.port("imap"), proc.port("pop3"), proc.pid,
                                proc.port("plain") if args.tls else None)
            sha = mailbox.sha256
            sessions = args.sessions

            def imap_once(port: int) -> None:
                imap_session(port, user, password, ctx)

            def pop3_once(port: int) -> None:
                pop3_login(port, user, password, ctx)

            runs = {
                "SEQ": lambda p: sessions_round(p[0], imap_once, sessions, 1, p[2]),
                "CONC": lambda p: sessions_round(p[0], imap_once, sessions, 16, p[2]),
                "POP3LOGIN": lambda p: sessions_round(p[1], pop3_once, sessions, 1, p[2]),
                "NOOP": lambda p: noop_round(p[0], user, password, args.noops, p[2], ctx),
                "STORM": lambda p: storm_round(p[0], user, password, args.noops, ctx),
                # (--tls) a plain session's NOOPs while the storm logs in over implicit TLS
                "TLSSTORM": lambda p: storm_round(p[0], user, password, args.noops, ctx,
                                                  p[3], None, p[2]),
                "POP3": lambda p: pop3_round(p[1], user, password, sha, p[2], ctx),
                "FETCH": lambda p: fetch_round(p[0], user, password, sha, p[2], ctx),
            }
            for port in ports.values():   # warm-up: early logins learnt
                imap_session(port[0], user, password, ctx)
                pop3_login(port[1], user, password, ctx)
            for name in args.only:
                run = runs[name]
                results = interleave(args.rounds, {label: (lambda p=p, run=run: run(p))
                                                   for label, p in ports.items()})
                speed, unit = SPEED[name]
                cells = []
                for label, rs in results.items():
                    cpu = median([r["cpu"] for r in rs])
                    cpus = sorted(round(r["cpu"], 2) for r in rs)
                    extra = "".join(f", {key} {median([r[key] for r in rs]):.2f}"
                                    for key in EXTRA.get(name, ()))
                    cells.append(f"{label}: {speed} {median([r[speed] for r in rs]):.1f}{extra}"
                                 + ("" if label == "direct" or not unit
                                    else f", {unit} {cpu:.2f} {cpus}"))
                print(f"{name}: " + "; ".join(cells) + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        shutil.rmtree(base_root, ignore_errors=True)


if __name__ == "__main__":
    main()
