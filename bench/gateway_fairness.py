"""Benchmark: fairness between gateway users. One user works on a 10,000-message mailbox
(SEARCH TEXT, SORT, THREAD, FETCH 1:* BODY[], COPY 1:*, STORE + EXPUNGE of the 10,000 copies,
then APPEND of a message whose one header line is 50 MB) while other users run NOOP and a
small FETCH in a loop; the others' latency is compared with the same loop while the heavy user
is idle, and a ticker inside the gateway's event loop reports the
longest stall: how late a 5 ms sleep woke up (wall clock: under load this includes waiting
for a CPU), and the most CPU the event-loop thread used between two wake-ups (one task step
holding the loop, whatever the load).

The gateway runs in a server process of its own (the code of this tree, and of `--base REV`
exported with `git archive` when given: rounds of both interleave in one run), SQLite store,
the bench's private Dovecot as POP3 upstream; every client is a process of its own (a client
thread in the gateway's process would compete for its GIL). Server CPU per phase is read from
/proc (all its threads). Every process is stopped on every path (the clients' sockets time out;
the server ends when its stdin closes, and is killed after a bound).

With --sample, a thread in the server samples the loop thread's stack every millisecond and
the stacks of every step that held the loop for more than 20 ms of CPU go to stderr: where the
long steps are (this is how the slow steps of STORE, EXPUNGE, SORT and UIDL were found).

With --watchers N, N more sessions of the heavy user sit in IDLE on the mailbox it copies into,
flags and expunges: they apply its 10,000-message events, and their steps count in the ticker's
figures of each command.

With --hostile, the heavy user's commands are replaced by hostile mail arriving: before each
heavy phase `hostile_mail()` is delivered to another user's POP3 mailbox, and that user logs in
and waits until the gateway has fetched it (the ingest analysis runs in a worker thread that
holds the GIL against the loop and every session): "INGEST hostile" is that wait.

Run: .venv/bin/python bench/gateway_fairness.py [--messages 10000] [--light 4] [--rounds 2]
                    [--idle-seconds 10] [--append-mb 50] [--sample] [--base f1e0b87]
                    [--watchers 4] [--hostile]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import threading
import time

from common import REPO_ROOT, Env, Table, cpu_seconds, median, percentile  # noqa: E402

from support.proxyproc import relay_config  # noqa: E402

TICK = 0.005   # the ticker's sleep: a wake-up later than this is time the loop was held
SERVER = r"""
import functools, json, sys, time
sys.path.insert(0, sys.argv[1])
import trio
from proxy.config import loads
from proxy.gateway.service import open_gateway
from proxy.metrics import Metrics
from proxy.net.conn import Conn
from proxy.session.context import Runtime, Session

TICK = float(sys.argv[3])
SAMPLE = sys.argv[4] == "sample"


class StepSampler(trio.abc.Instrument):
    # With --sample: a thread samples the trio thread's stack every millisecond; the samples
    # of each task step that held the loop for more than 20 ms (thread CPU) are kept, and written
    # to stderr (the bench's own) with the ticker's figures: where the long steps are.

    def __init__(self):
        import threading
        self.ident, self.step, self.long, self.started = threading.get_ident(), None, [], time.thread_time()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        import traceback
        while True:
            time.sleep(0.001)
            step, frame = self.step, sys._current_frames().get(self.ident)
            if step is not None and frame is not None:
                step.append("\n".join(f"{f.filename.rsplit('/', 3)[-1]}:{f.lineno} {f.name}"
                                      for f in traceback.extract_stack(frame)[-14:]))

    def before_task_step(self, task):
        self.step, self.started = [], time.thread_time()

    def after_task_step(self, task):
        spent, samples, self.step = time.thread_time() - self.started, self.step, None
        if spent > 0.02 and samples is not None:
            self.long.append((spent, task.name, samples))

    def dump(self):
        import collections
        for spent, name, samples in sorted(self.long, reverse=True)[:5]:
            print(f"--- step of {spent * 1000:.0f} ms CPU in {name}, {len(samples)} samples",
                  file=sys.stderr)
            for stack, n in collections.Counter(samples).most_common(4):
                print(f"{n} samples:\n{stack}\n", file=sys.stderr)
        sys.stderr.flush()
        self.long = []

async def main():
    config = loads(open(sys.argv[2]).read())
    listener, metrics = config.listeners[0], Metrics()
    runtime = Runtime.build(config, metrics)
    sampler = StepSampler() if SAMPLE else None
    if sampler is not None:
        trio.lowlevel.add_instrument(sampler)
    stalls = {"max": 0.0, "over_50ms": 0, "ticks": 0, "busy_max": 0.0, "gc_max": 0.0}
    gc_started = [0.0]

    def gc_pause(phase, info):   # the garbage collector holds the loop (and the GIL) too
        if phase == "start":
            gc_started[0] = time.thread_time()
        else:
            stalls["gc_max"] = max(stalls["gc_max"], time.thread_time() - gc_started[0])

    import gc
    gc.callbacks.append(gc_pause)
    port = [0]
    async with open_gateway(config, metrics) as service:
        collector = json.loads(sys.argv[5])   # --gc: the collector's set-up after start-up
        if collector is None:   # what the tree's own start-up does (proxy/app.py), if anything
            try:
                from proxy import collector as tree_collector
            except ImportError:
                pass
            else:
                tree_collector.set_up(config.gc, startup=True)
        else:
            if collector["freeze"]:
                gc.collect()
                gc.freeze()
            if collector["threshold"]:
                gc.set_threshold(*collector["threshold"])
        async def handler(stream):
            conn = Conn(stream)
            peer = stream.socket.getpeername()
            try:
                await service.handle(Session(runtime, listener, peer[0], peer[1], "127.0.0.1",
                                             port[0]), conn)
            finally:
                await conn.aclose()

        async def ticker():
            last, last_cpu = time.perf_counter(), time.thread_time()
            while True:
                await trio.sleep(TICK)
                now, cpu = time.perf_counter(), time.thread_time()
                late, last = now - last - TICK, now
                busy, last_cpu = cpu - last_cpu, cpu   # CPU of the trio thread in between
                stalls["ticks"] += 1
                stalls["max"] = max(stalls["max"], late)
                stalls["busy_max"] = max(stalls["busy_max"], busy)
                stalls["over_50ms"] += late > 0.05

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                              host="127.0.0.1"))
            port[0] = listeners[0].socket.getsockname()[1]
            nursery.start_soon(ticker)
            print(port[0], flush=True)
            stdin, pending = trio.lowlevel.FdStream(0), b""
            while data := await stdin.receive_some():
                pending += data
                while b"\n" in pending:
                    _, pending = pending.split(b"\n", 1)
                    print(json.dumps(stalls | {"objects": len(gc.get_objects()),
                                               "frozen": gc.get_freeze_count(),
                                               "full": gc.get_stats()[2]["collections"]}),
                          flush=True)
                    if sampler is not None:
                        sampler.dump()
                    stalls.update(max=0.0, over_50ms=0, ticks=0, busy_max=0.0, gc_max=0.0)
            nursery.cancel_scope.cancel()

trio.run(main)
"""


# -- the mailbox -------------------------------------------------------------------------------------

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def message(rng: random.Random, n: int) -> bytes:
    """A ~3 KB text message; every 10th in a thread with the one before, every 100th with the
    needle that SEARCH TEXT looks for."""
    refs = f"References: <m{n - 1}@bench.example>\r\n" if n % 10 else ""
    subject = ("Re: " if n % 10 else "") + " ".join(rng.choice(WORDS) for _ in range(4))
    body = "\r\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40))
    if n % 100 == 0:
        body += "\r\nthe needle is here"
    return (f"From: Sender {n % 53} <s{n % 53}@bench.example>\r\nTo: bench@example.com\r\n"
            f"Subject: {subject}\r\nDate: Mon, 01 Jan 2024 {n % 24:02d}:{n % 60:02d}:00 +0000\r\n"
            f"Message-ID: <m{n}@bench.example>\r\n{refs}\r\n{body}\r\n").encode()


def hostile_mail() -> list[bytes]:
    """The costliest messages the fuzzing of the gateway's analysis found (tests/fuzz/hostile.py),
    at sizes a POP3 server hands over without complaint."""
    head = b"From: a@bench.example\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
    return [
        # the sort record parsed these whole, twice each (fz, ninth session)
        b"From: " + b"," * 262144 + b"\r\nTo: " + b"," * 262144 + b"\r\n\r\nbody\r\n",
        # RFC 2231 continuations appended with bytes += (fz, ninth session)
        head + b"Content-Type: text/plain" + b"".join(b"; a*%d*=xxxxxxxx" % n for n in range(160000))
        + b"\r\n\r\nbody\r\n",
        # the eighth session's: unclosed encoded words, base-subject blobs, '<' without '>'
        b"From: a@bench.example\r\nSubject: " + b"=?a?q?x" * 20000 + b"\r\n\r\nbody\r\n",
        b"From: a@bench.example\r\nSubject: " + b"[b] " * 20000 + b"\r\n\r\nbody\r\n",
        b"From: a@bench.example\r\nMessage-ID: " + b"<" * 40000 + b"\r\nReferences: " + b"<" * 40000
        + b"\r\n\r\nbody\r\n",
    ]


# -- clients (each a process: `gateway_fairness.py --client ...`) ---------------------------------------

def _login(port: int, user: str, password: str):
    import imaplib

    imaplib._MAXLINE = 1 << 30
    client = imaplib.IMAP4("127.0.0.1", port, timeout=300)
    client.login(user, password)
    return client


def light_client(port: int, user: str, password: str) -> None:
    """NOOP and FETCH of one message's flags and subject, alternately, until stdin closes;
    prints {"NOOP": [seconds...], "FETCH": [...]}."""
    client = _login(port, user, password)
    count = int(client.select("INBOX")[1][0])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    times: dict[str, list[float]] = {"NOOP": [], "FETCH": []}
    print("ready", flush=True)
    n = 0
    while not stop.is_set():
        n += 1
        started = time.perf_counter()
        if n % 2:
            assert client.noop()[0] == "OK"
            times["NOOP"].append(time.perf_counter() - started)
        else:
            typ, _ = client.fetch(str(n % count + 1), "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            times["FETCH"].append(time.perf_counter() - started)
    client.logout()
    print(json.dumps(times), flush=True)


def heavy_client(port: int, user: str, password: str, append_mb: int = 0) -> None:
    """The heavy user's commands, one after the other; prints {command: seconds} after each
    and waits for a line on stdin before the next."""
    client = _login(port, user, password)
    count = int(client.select("INBOX")[1][0])
    steps = [
        ("SEARCH TEXT", lambda: client.search(None, "TEXT", "needle")),
        ("SORT", lambda: client.sort("(SUBJECT)", "UTF-8", "ALL")),
        ("THREAD", lambda: client.thread("REFERENCES", "UTF-8", "ALL")),
        ("FETCH 1:* BODY[]", lambda: client.fetch("1:*", "(BODY.PEEK[])")),
        ("COPY 1:*", lambda: client.copy("1:*", "Copies")),
        ("SELECT Copies", lambda: client.select("Copies")),
        ("STORE 1:* \\Deleted", lambda: client.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")),
        ("EXPUNGE", lambda: client.expunge()),
    ]
    if append_mb:   # a hostile message: one header line of `append_mb` MB
        huge = (b"Subject: huge\r\nX-Huge: " + b"a" * (append_mb << 20) + b"\r\n\r\nbody\r\n")
        steps.append((f"APPEND {append_mb} MB header",
                      lambda: client.append("Copies", None, None, huge)))
    client.create("Copies")
    print(json.dumps({"messages": count}), flush=True)
    for name, step in steps:   # one line per command; the driver answers once it has the
        started = time.perf_counter()   # ticker's figures for it
        result = step()
        print(json.dumps({name: time.perf_counter() - started}), flush=True)
        assert result[0] == "OK", (name, result)
        sys.stdin.readline()
    client.logout()


def hostile_client(port: int, user: str, password: str, count: int = 0) -> None:
    """The user whose hostile mail arrives: log in (a login syncs), then SELECT until INBOX
    holds `count` messages; prints {"INGEST hostile": seconds}."""
    started = time.perf_counter()
    client = _login(port, user, password)
    while int(client.select("INBOX")[1][0]) < count:
        time.sleep(0.05)
    print(json.dumps({"INGEST hostile": time.perf_counter() - started}), flush=True)
    client.logout()


def watcher_client(port: int, user: str, password: str, _append_mb: int = 0) -> None:
    """Another session of the heavy user: SELECT Copies (the mailbox the heavy user fills,
    flags and expunges), then IDLE, reading every push, until stdin closes; prints
    {"lines": n}: the other sessions that apply its 10,000-message events."""
    client = _login(port, user, password)
    client.create("Copies")   # NO if the heavy user made it first
    assert client.select("Copies")[0] == "OK"
    client.send(b"w1 IDLE\r\n")
    assert client.readline().startswith(b"+")
    lines = [0]

    def read() -> None:
        while not client.readline().startswith(b"w1 "):
            lines[0] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    print("ready", flush=True)
    sys.stdin.read()
    client.send(b"DONE\r\n")
    reader.join()
    client.logout()
    print(json.dumps({"lines": lines[0]}), flush=True)


# -- the driver ----------------------------------------------------------------------------------------

def export(rev: str) -> pathlib.Path:
    """`rev` of this repository in a fresh directory (`git archive`: no worktree is touched)."""
    import tempfile

    root = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-fairness-"))
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "proxy"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


class Server:
    """The gateway of one tree in its own process, with the ticker."""

    def __init__(self, env: Env, label: str, tree: pathlib.Path, sample: bool = False,
                 collector: dict | None = None):
        cfg = relay_config(env.dovecot, listeners=("imap",), allow_plaintext_auth=True,
                           max_connections_per_ip=100000)
        cfg["listeners"][0]["mode"] = "gateway"
        cfg.pop("metrics", None)
        cfg["gateway"] = {"store": str(env.root / f"{label}.db"), "poll_interval": "600s"}
        path = env.root / f"{label}.json"
        path.write_text(json.dumps(cfg))
        self.log = open(env.root / f"{label}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tree), str(path), str(TICK),
                                      "sample" if sample else "-", json.dumps(collector)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None if sample else self.log)
        env.on_close(self.stop)
        self.port = int(self.proc.stdout.readline())

    def stalls(self) -> dict:
        """The ticker's figures since the last call (and resets them)."""
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def client(mode: str, port: int, user: str, password: str, append_mb: int = 0) -> subprocess.Popen:
    # one JSON argument: a random password may start with "-", which argparse takes for an option
    return subprocess.Popen([sys.executable, __file__, "--client",
                             json.dumps([mode, port, user, password, append_mb])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, bound: float = 600) -> dict:
    """A client's JSON answer; the client is killed if it has not answered within `bound`."""
    try:
        out, _ = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return json.loads(out.strip().splitlines()[-1])


def fill(server: Server, user: str, password: str, count: int) -> None:
    """Log in until the gateway has fetched all `count` messages (a login syncs)."""
    client = _login(server.port, user, password)
    deadline = time.monotonic() + 1800
    while int(client.select("INBOX")[1][0]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user}: the gateway did not fetch {count} messages")
        time.sleep(1)
    client.logout()


def phase(server: Server, heavy: bool, lights: list, heavy_user, idle_seconds: float,
          append_mb: int = 0, watchers: int = 0, hostile: tuple | None = None) -> dict:
    server.stalls()   # reset
    pid = server.proc.pid
    procs = [client("light", server.port, *user) for user in lights]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        if heavy and hostile is not None:   # (user, messages it will hold once fetched)
            server.stalls()
            commands = finish(client("hostile", server.port, *hostile[0], hostile[1]), 1800)
            per_command = {"INGEST hostile": server.stalls()}
        elif heavy:
            commands, per_command = heavy_run(server, heavy_user, append_mb, watchers)
        else:
            per_command = {}
            time.sleep(idle_seconds)
            commands = {}
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu
    finally:
        for proc in procs:   # EOF on stdin: the light clients stop and answer
            if proc.stdin is not None:
                proc.stdin.close()
                proc.stdin = None
        answers = [finish(proc, 120) for proc in procs]
    stalls = server.stalls()
    latencies = {op: sorted(t for a in answers for t in a[op]) for op in ("NOOP", "FETCH")}
    if per_command:   # the whole phase's worst: the commands' and what came after them
        stalls = {key: max([stalls[key]] + [s[key] for s in per_command.values()])
                  for key in ("max", "busy_max", "gc_max")} | {
            "over_50ms": stalls["over_50ms"] + sum(s["over_50ms"] for s in per_command.values())}
    return {"commands": commands, "latencies": latencies, "stalls": stalls, "cpu": cpu,
            "seconds": elapsed, "per_command": per_command}


def heavy_run(server: Server, user, append_mb: int, watchers: int = 0) -> tuple[dict, dict]:
    """Run the heavy client, with `watchers` other sessions of its account in IDLE on the
    mailbox it changes; after each of its commands read the ticker (so each command gets
    the stalls of its own run). Returns ({command: seconds}, {command: ticker figures})."""
    others = [client("watcher", server.port, *user) for _ in range(watchers)]
    for other in others:
        assert other.stdout.readline().strip() == "ready"
    proc = client("heavy", server.port, *user, append_mb)
    commands: dict[str, float] = {}
    per_command: dict[str, dict] = {}
    try:
        server.stalls()
        while line := proc.stdout.readline():
            answer = json.loads(line)
            commands.update(answer)
            if "messages" not in answer:
                per_command[next(iter(answer))] = server.stalls()
                proc.stdin.write("next\n")
                proc.stdin.flush()
        if proc.wait(600) != 0:
            raise RuntimeError("the heavy client failed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for other in others:   # EOF on stdin: DONE, LOGOUT
            if other.stdin is not None:
                other.stdin.close()
                other.stdin = None
        for other in others:
            finish(other, 120)
    return commands, per_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--light", type=int, default=4, help="other users running NOOP/FETCH")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--sample", action="store_true",
                        help="write the stacks of the loop's long steps to the servers' logs")
    parser.add_argument("--base", help="also run this revision (git archive), rounds interleaved")
    parser.add_argument("--append-mb", type=int, default=50,
                        help="the heavy user's last command: APPEND of a message whose one "
                             "header line has this many MB (0: none)")
    parser.add_argument("--gc", action="append", default=[], metavar="SETUP",
                        help="also run this tree with the collector set up after start-up "
                             "(repeatable; rounds interleaved): 'freeze' (gc.freeze()), "
                             "'T0,T1,T2' (gc.set_threshold), or 'freeze:T0,T1,T2'")
    parser.add_argument("--watchers", type=int, default=0,
                        help="other sessions of the heavy user in IDLE on the mailbox it fills, "
                             "flags and expunges (they apply its 10,000-message events)")
    parser.add_argument("--hostile", action="store_true",
                        help="instead of the heavy user's commands: hostile mail arriving for "
                             "another user (hostile_mail(), delivered again before each phase)")
    parser.add_argument("--client", help=argparse.SUPPRESS)   # JSON [mode, port, user, password]
    args = parser.parse_args()
    if args.client:
        mode, port, user, password, append_mb = json.loads(args.client)
        run = {"light": light_client, "watcher": watcher_client}.get(mode)
        if run is not None:
            run(int(port), user, password)
        elif mode == "hostile":
            hostile_client(int(port), user, password, append_mb)
        else:
            heavy_client(int(port), user, password, append_mb)
        return
    trees: dict[str, tuple[pathlib.Path, dict | None]] = {"this tree": (REPO_ROOT, None)}
    for setup in args.gc:
        trees[f"gc {setup}"] = (REPO_ROOT, collector_setup(setup))
    with Env("gateway-fairness") as env:
        if args.base:
            trees[args.base] = (export(args.base), None)
            env.on_close(lambda: shutil.rmtree(trees[args.base][0], ignore_errors=True))
        rng = random.Random(1)
        heavy_user = env.dovecot.add_user()
        for n in range(1, args.messages + 1):
            env.dovecot.deliver(heavy_user[0], message(rng, n), flags="S")
        lights = []
        for _ in range(args.light):
            lights.append(env.dovecot.add_user())
            for n in range(1, 51):
                env.dovecot.deliver(lights[-1][0], message(rng, n), flags="S")
        hostile_users = {label: (env.dovecot.add_user(), 0) for label in trees} if args.hostile else {}
        servers = {}
        for label, (tree, collector) in trees.items():
            servers[label] = Server(env, label.replace(" ", "-").replace(":", "-"), tree,
                                    args.sample, collector)
            fill(servers[label], *heavy_user, args.messages)
            for user in lights:
                fill(servers[label], *user, 50)
            print(f"{label}: filled", file=sys.stderr)
        results: dict[tuple[str, str], list[dict]] = {}
        for round_no in range(args.rounds):
            for label, server in servers.items():
                for heavy in (False, True):
                    hostile = None
                    if heavy and args.hostile:   # new mail for this tree's own hostile user
                        user, held = hostile_users[label]
                        mail = hostile_mail()
                        for raw in mail:
                            env.dovecot.deliver(user[0], raw, flags="S")
                        hostile_users[label] = (user, held + len(mail))
                        hostile = hostile_users[label]
                    result = phase(server, heavy, lights, heavy_user, args.idle_seconds,
                                   args.append_mb, args.watchers, hostile)
                    results.setdefault((label, "heavy" if heavy else "idle"), []).append(result)
                    print(f"round {round_no + 1} {label} {'heavy' if heavy else 'idle'}: "
                          f"late max {result['stalls']['max'] * 1000:.0f} ms, busy max "
                          f"{result['stalls']['busy_max'] * 1000:.0f} ms, load "
                          f"{os.getloadavg()[0]:.1f}", file=sys.stderr)
        report(results, args)
        for label, server in servers.items():
            figures = server.stalls()
            print(f"{label}: {figures['objects']} objects tracked by the collector at the end, "
                  f"{figures['frozen']} frozen, {figures['full']} full collections")


def collector_setup(setup: str) -> dict:
    """--gc's argument as the server's collector set-up."""
    freeze, _, threshold = setup.partition(":") if setup.startswith("freeze") else ("", "", setup)
    return {"freeze": freeze == "freeze",
            "threshold": [int(x) for x in threshold.split(",")] if threshold else None}


def report(results: dict[tuple[str, str], list[dict]], args) -> None:
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    table = Table(f"Other users' latency (ms, all rounds pooled; {args.light} users, NOOP and "
                  "FETCH) while one user works on its mailbox or is idle, and the gateway loop's "
                  "longest stall (ms, worst round)",
                  ["tree", "heavy user", "NOOP p50", "NOOP p99", "NOOP max", "FETCH p50",
                   "FETCH p99", "FETCH max", "loop late max", "late > 50 ms", "loop busy max"])
    for (label, mode), runs in results.items():
        row: list = [label, mode]
        for op in ("NOOP", "FETCH"):
            pooled = sorted(t for r in runs for t in r["latencies"][op])
            row += [percentile(pooled, 0.5) * 1000, percentile(pooled, 0.99) * 1000,
                    (pooled[-1] if pooled else 0) * 1000]
        row += [max(r["stalls"]["max"] for r in runs) * 1000,
                sum(r["stalls"]["over_50ms"] for r in runs),
                max(r["stalls"]["busy_max"] for r in runs) * 1000]
        table.add(*row)
    print(table.render())
    names = [n for n in next(iter(r for (_, m), rs in results.items() if m == "heavy" for r in rs))
             ["commands"] if n != "messages"]
    heavy = Table(f"The heavy user's commands on {args.messages} messages (s, median of rounds) "
                  "and the gateway's CPU for the whole phase (s, /proc, median)",
                  ["tree", *names, "server CPU"])
    for (label, mode), runs in results.items():
        if mode == "heavy":
            heavy.add(label, *[median([r["commands"][n] for r in runs]) for n in names],
                      median([r["cpu"] for r in runs]))
    print(heavy.render())
    stalls = Table("The gateway loop while each heavy command ran (ms, worst of rounds): how "
                   "late the ticker woke (wall clock) and the most CPU the loop thread used "
                   "between two wake-ups, and the longest garbage collection (CPU of the loop "
                   "thread)", ["tree", "command", "late max", "busy max", "gc max"])
    for (label, mode), runs in results.items():
        if mode == "heavy":
            for n in names:
                stalls.add(label, n, *(max(r["per_command"][n][key] for r in runs) * 1000
                                       for key in ("max", "busy_max", "gc_max")))
    print(stalls.render())


if __name__ == "__main__":
    main()
