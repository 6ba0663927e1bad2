"""Where a sequential relayed session's wall time goes (issue 16, sessions per second): the
client's steps (connect -> greeting, LOGIN, SELECT INBOX, LOGOUT, close) through mailproxy,
nginx's mail proxy and direct Dovecot, interleaved in one run, and inside mailproxy's step the
engine thread's own events on the same clock (perf_counter_ns is CLOCK_MONOTONIC, shared by
every process on the machine).

    .venv/bin/python bench/session_timeline.py [--sessions 200] [--rounds 5] [--base REV]
                                               [--early] [--no-nginx]

The proxy (this tree's, or `--base REV`) runs with its engine thread's `epoll.poll` (and
register/modify/unregister), `os.read`, `os.write`, and the socket methods the engine's accept
and login use (`accept`, `connect_ex`, `send`, `recv`, `shutdown`, `close`) wrapped by this
script, in the proxy's process only (as bench/roundtrip_timeline.py does: the proxy's code is
not instrumented). Each event is (kind, descriptor, bytes, time). Per relayed session the
descriptors are named by role (`c`: the accepted client, `u`: the upstream the login connected)
and every event from the client's connect() to the next session's connect() is placed on the
session's timeline; the most common sequence of events is printed with the median time of each
event from the client's connect(), beside the client's own steps (us). Events on descriptors of
the previous session (its end: the upstream's LOGOUT answer, its close) are printed as `prev`.

Then per path: the median of each client step, and per session (median of rounds) the CPU,
context switches and run-queue wait of the proxy's threads, nginx's processes (master, worker)
and Dovecot's processes, from /proc/PID/task/*/{status,schedstat}. nginx's LOGIN includes the
HTTP auth request to bench/nginxmail.py's AuthResponder, a Python thread in this process.
Needs root, like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import nginxmail  # noqa: E402
from ab_relay import export  # noqa: E402
from clients import Imap  # noqa: E402
from common import REPO_ROOT, Env, QuietProxyProcess, small_mailbox  # noqa: E402
from roundtrip_timeline import load_log, tasks, total_op  # noqa: E402

TRACED = (
    "import sys; sys.path.insert(0, {root!r}); sys.argv[0] = 'mailproxy'\n"
    "import os, select, socket, threading, time, array\n"
    "ns = time.perf_counter_ns; ident = threading.get_ident\n"
    "log = array.array('q'); add = log.extend; tid = [None]\n"
    "POLL, POLLED, READ, WSTART, WDONE, ACCEPT, CONNECT, SEND, RECV, CLOSE, SHUT, REG = range(12)\n"
    "_read, _write, _epoll = os.read, os.write, select.epoll\n"
    "class TracedEpoll:\n"   # (select.epoll cannot be subclassed)
    "    def __init__(self, *args):\n"
    "        self._e = _epoll(*args)\n"
    "    def __getattr__(self, name):\n"
    "        return getattr(self._e, name)\n"
    "    def poll(self, timeout=-1, maxevents=-1):\n"
    "        if ident() != tid[0]:\n"
    "            return self._e.poll(timeout, maxevents)\n"
    "        add((POLL, 0, 0, ns()))\n"
    "        ready = self._e.poll(timeout, maxevents)\n"
    "        add((POLLED, len(ready), 0, ns()))\n"
    "        return ready\n"
    "    def register(self, fd, *a):\n"
    "        if ident() == tid[0]: add((REG, fd if isinstance(fd, int) else fd.fileno(), 0, ns()))\n"
    "        return self._e.register(fd, *a)\n"
    "    def modify(self, fd, *a):\n"
    "        if ident() == tid[0]: add((REG, fd if isinstance(fd, int) else fd.fileno(), 1, ns()))\n"
    "        return self._e.modify(fd, *a)\n"
    "    def unregister(self, fd):\n"
    "        if ident() == tid[0]: add((REG, fd if isinstance(fd, int) else fd.fileno(), 2, ns()))\n"
    "        return self._e.unregister(fd)\n"
    "select.epoll = TracedEpoll\n"
    "def read(fd, n):\n"
    "    data = _read(fd, n)\n"
    "    if ident() == tid[0]: add((READ, fd, len(data), ns()))\n"
    "    return data\n"
    "def write(fd, data):\n"
    "    if ident() != tid[0]: return _write(fd, data)\n"
    "    t = ns(); sent = _write(fd, data)\n"
    "    add((WSTART, fd, sent, t)); add((WDONE, fd, sent, ns()))\n"
    "    return sent\n"
    "os.read, os.write = read, write\n"
    "S = socket.socket\n"
    "_accept, _connect_ex, _send, _recv, _close, _shutdown = "
    "S.accept, S.connect_ex, S.send, S.recv, S.close, S.shutdown\n"
    "def accept(self):\n"
    "    got = _accept(self)\n"
    "    if ident() == tid[0]: add((ACCEPT, got[0].fileno(), 0, ns()))\n"
    "    return got\n"
    "def connect_ex(self, addr):\n"
    "    if ident() != tid[0]: return _connect_ex(self, addr)\n"
    "    t = ns(); rc = _connect_ex(self, addr); add((CONNECT, self.fileno(), 0, t))\n"
    "    return rc\n"
    "def send(self, data, *a):\n"
    "    if ident() != tid[0]: return _send(self, data, *a)\n"
    "    t = ns(); sent = _send(self, data, *a)\n"
    "    add((WSTART, self.fileno(), sent, t)); add((WDONE, self.fileno(), sent, ns()))\n"
    "    return sent\n"
    "def recv(self, n, *a):\n"
    "    data = _recv(self, n, *a)\n"
    "    if ident() == tid[0]: add((RECV, self.fileno(), len(data), ns()))\n"
    "    return data\n"
    "def close(self):\n"
    "    if ident() == tid[0]: add((CLOSE, self.fileno(), 0, ns()))\n"
    "    return _close(self)\n"
    "def shutdown(self, how):\n"
    "    if ident() == tid[0]: add((SHUT, self.fileno(), how, ns()))\n"
    "    return _shutdown(self, how)\n"
    "S.accept, S.connect_ex, S.send, S.recv, S.close, S.shutdown = "
    "accept, connect_ex, send, recv, close, shutdown\n"
    "import proxy.relay.engine as engine\n"
    "run = engine.Engine._run_thread\n"
    "def traced(self):\n"
    "    tid[0] = ident()\n"
    "    try:\n        run(self)\n"
    "    finally:\n        open({out!r}, 'wb').write(log.tobytes())\n"
    "engine.Engine._run_thread = traced\n"
    "from proxy.cli import main\n"
    "try:\n    main()\n"
    "finally:\n"
    "    [t.join(30) for t in threading.enumerate() if t.name == 'relay-engine']\n")

KINDS = ["poll", "polled", "read", "write", "wrote", "accept", "connect", "send", "recv",
         "close", "shutdown", "epoll_ctl"]
STEPS = ("greeting", "LOGIN", "SELECT", "LOGOUT", "close")


def session(port: int, user: str, password: str) -> tuple[int, ...]:
    """One LOGIN + SELECT INBOX + LOGOUT session: the client's times (perf_counter_ns) at
    connect(), the greeting read, LOGIN sent/answered, SELECT sent/answered, LOGOUT
    sent/answered, after close()."""
    ns = time.perf_counter_ns
    t0 = ns()
    imap = Imap(port)
    t1 = ns()
    imap.login(user, password)
    t2 = ns()
    imap.command(b"SELECT INBOX")
    t3 = ns()
    imap.command(b"LOGOUT")
    t4 = ns()
    imap.close()
    return t0, t1, t2, t3, t4, ns()


def timelines(log: list[tuple[int, int, int, int]], client: list[tuple[int, ...]]
              ) -> list[list[tuple[str, int]]]:
    """Per session of `client`, its engine events (label, ns after the client's connect()) up
    to the next session's connect(); descriptors named by role as the module docstring says."""
    out: list[list[tuple[str, int]]] = []
    role: dict[int, str] = {}
    j = 0
    starts = [c[0] for c in client] + [1 << 62]
    for n, times in enumerate(client):
        t0, end = times[0], starts[n + 1]
        while j < len(log) and log[j][3] < t0:
            j += 1
        for fd in [fd for fd, r in role.items() if r in ("c", "u")]:
            role[fd] = "prev " + role[fd]   # the previous session's descriptors
        events: list[tuple[str, int]] = []
        while j < len(log) and log[j][3] < end:
            kind, fd, size, t = log[j]
            j += 1
            if kind == 5:
                role[fd] = "c"
            elif kind == 6:
                role[fd] = "u"
            if kind in (0, 1):
                label = KINDS[kind] + (f" {fd} ready" if kind == 1 else "")
            elif kind == 11:
                label = f"epoll_ctl {('add', 'mod', 'del')[size]} {role.get(fd, '?')}"
            else:
                label = f"{KINDS[kind]} {role.get(fd, '?')}" + (f" {size}B" if kind in (
                    2, 3, 7, 8) else "")
            events.append((label, t - t0))
        out.append(events)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", default=None, help="this revision's proxy instead of the tree's")
    parser.add_argument("--early", action="store_true", help="connect_early on the upstream")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--events", type=int, default=80, help="events of the timeline printed")
    args = parser.parse_args()
    root = export(args.base) if args.base else REPO_ROOT
    out = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-session-timeline-")) / "engine.log"
    print(f"session_timeline {args.base or 'this tree'}{' connect_early' if args.early else ''}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()}")
    with Env("session-timeline") as env:
        user, password = env.user_with(small_mailbox())
        listeners = [{"name": "imap", "protocol": "imap"}]
        extra: dict = {"relay": {"engine": "epoll"}}
        if args.early:
            extra["upstreams"] = {"main": {"host": "127.0.0.1", "imap": {
                "port": env.dovecot.imap_port, "tls": "none", "connect_early": True}}}
        probe = env.proxy(listeners, extra=extra)
        probe.stop()   # (only its config was wanted: the traced proxy takes its port)
        command = [sys.executable, "-c", TRACED.format(root=str(root), out=str(out)),
                   "--log-level", "WARNING", "serve", "--config", str(probe.config_path)]
        proxy = QuietProxyProcess(probe.config, probe.tmp_path.with_name("traced"),
                                  command=command)
        env.on_close(proxy.stop)
        ports = {"direct": env.dovecot.imap_port, "mailproxy": proxy.port("imap")}
        ng = None
        if not args.no_nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port,
                                     env.dovecot.pop3_port)
            env.on_close(ng.stop)
            ports["nginx"] = ng.imap_port
        for port in ports.values():   # warm-up
            for _ in range(20):
                session(port, user, password)
        watched = {"proxy": proxy.pid, "dovecot": env.dovecot.master_pid or 0,
                   **({"nginx": ng.server.server.proc.pid} if ng is not None else {})}
        steps: dict[str, list[tuple[int, ...]]] = {k: [] for k in ports}
        sched: dict[str, list[tuple[float, float, float]]] = {}
        client: list[tuple[int, ...]] = []
        for _ in range(args.rounds):
            for label, port in ports.items():
                before = {k: tasks(v) for k, v in watched.items()}
                got = [session(port, user, password) for _ in range(args.sessions)]
                after = {k: tasks(v) for k, v in watched.items()}
                steps[label] += got
                if label == "mailproxy":
                    client += got
                for who in watched:
                    sched.setdefault(f"{label}: {who}", []).append(
                        total_op(before[who], after[who], args.sessions))
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
    log = load_log(out)
    shutil.rmtree(out.parent, ignore_errors=True)
    print("\nclient steps, median (us): connect->greeting, LOGIN, SELECT, LOGOUT, close; session")
    for label, rows in steps.items():
        parts = [statistics.median((r[i + 1] - r[i]) / 1e3 for r in rows) for i in range(5)]
        whole = statistics.median((r[5] - r[0]) / 1e3 for r in rows)
        print(f"  {label:<10} " + " ".join(f"{p:8.1f}" for p in parts) + f"  {whole:8.1f}")
    print("\nper session, median of rounds: CPU us, context switches, run-queue wait us")
    for label, rows in sched.items():
        sw, cpu, wait = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"  {label:<22} {cpu:8.1f} {sw:6.2f} {wait:8.1f}")
    lines = timelines(log, client)
    own = [[e for e in s if "prev" not in e[0] and not e[0].startswith("poll")] for s in lines]
    shapes = collections.Counter(tuple(label for label, _ in s) for s in own)
    shape, count = shapes.most_common(1)[0]
    chosen = [n for n, s in enumerate(own) if tuple(label for label, _ in s) == shape]
    print(f"\nmailproxy: {count} of {len(lines)} sessions share the most common sequence of "
          f"{len(shape)} events on their own descriptors ({len(shapes)} sequences; polls and "
          f"the previous session's events apart); median us after the client's connect():")
    marks = [(statistics.median((client[n][i] - client[n][0]) / 1e3 for n in chosen),
              f"CLIENT {what}")
             for i, what in enumerate(("connect()", "greeting read", "LOGIN answered",
                                       "SELECT answered", "LOGOUT answered", "closed"))]
    rows = [(statistics.median(own[n][i][1] / 1e3 for n in chosen), shape[i])
            for i in range(len(shape))]
    merged = sorted(marks + rows, key=lambda r: r[0])
    last = 0.0
    for t, label in merged[:args.events] if args.events else merged:
        print(f"  {t:9.1f} {t - last:+8.1f}  {label}")
        last = t
    prev = [[e for e in lines[n] if "prev" in e[0]] for n in chosen]
    pshapes = collections.Counter(tuple(label for label, _ in s) for s in prev)
    pshape, pcount = pshapes.most_common(1)[0]
    print(f"\nthe previous session's events in these sessions' windows ({pcount} of "
          f"{len(chosen)} alike), median us after the client's connect():")
    for i, label in enumerate(pshape):
        t = statistics.median(s[i][1] / 1e3 for s in prev
                              if tuple(x for x, _ in s) == pshape)
        print(f"  {t:9.1f}  {label}")
    polls = [sum(1 for e in s if e[0].startswith("polled")) for s in lines]
    print(f"\nwake-ups (poll returns) of the engine per session: {statistics.fmean(polls):.2f}")

if __name__ == "__main__":
    main()
