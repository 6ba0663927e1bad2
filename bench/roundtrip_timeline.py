"""Where a relayed NOOP's (or RETR's) round trip goes: a timeline per round trip from the client
and the relay engine's thread on one clock (perf_counter_ns is CLOCK_MONOTONIC, shared by every
process on the machine), beside direct Dovecot (and nginx) in the same run.

    .venv/bin/python bench/roundtrip_timeline.py [--noops 3000] [--rounds 5] [--retrs N]
                                                 [--nginx] [--spin US] [--slice US]
                                                 [--base REV] [--switch SECONDS]

The proxy (this tree's, or `--base REV` exported as bench/ab_relay.py does) runs with its engine
thread's `epoll.poll`, `os.read` and `os.write` wrapped (by this script, in the proxy's process
only: nothing in the proxy's code is instrumented, so it costs nothing when not measured): each
records perf_counter_ns, in the engine's thread only. The client sends NOOPs one at a time and
records the time before its `send`, after it, and once the tagged answer is read; rounds
alternate with the same client against Dovecot directly (and nginx's mail proxy, `--nginx`).
Per relayed NOOP:

    client send -> engine poll returns            (A) the send, the engine thread's wake-up
    poll return -> client read done               (B) the read
    read done -> write upstream starts            (C) Python before the forward write
    write upstream                                (D) the write (loopback: the receiver's TCP work)
    write upstream done -> next poll              (E) Python after the write
    write done -> poll returns for the upstream   (F) Dovecot, its wake-up and the engine's
    poll return -> upstream read done             (G)
    read done -> write to the client starts       (H) Python before the forward write
    write to the client                           (I)
    write done -> the client has the line         (J) the client's wake-up and its read
    write to the client done -> next poll         (E2) Python after the write

and, per round and path, the context switches, CPU and run-queue wait per operation of the
proxy's busiest thread and all its threads, nginx's and Dovecot's processes and this client's
thread (/proc/PID/task/*/status and schedstat): whether trio's thread wakes during a relayed
NOOP. `--retrs N`: the same for N RETRs per POP3 session. `--spin US`: rounds with US of busy
work after each engine write, interleaved with the plain ones (is the work after a write on the
round trip?). `--bare`: a bare Python epoll relay (read, write, nothing else) in the rounds
too (to Dovecot's POP3 with `--retrs`, else IMAP): the floor any Python relay of this
shape pays; `--untraced`: the same tree's
proxy without the wrappers too (its CPU per op, the wrappers' cost). `--slice US`: the engine
thread's own EEVDF slice (sched_setattr, Linux 6.12+).
Needs root, like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import mmap
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import nginxmail  # noqa: E402
from ab_relay import export  # noqa: E402
from clients import Imap, Reader, connect  # noqa: E402
from common import REPO_ROOT, Env, QuietProxyProcess, make_mailbox  # noqa: E402

TRACED = (
    "import sys; sys.path.insert(0, {root!r}); sys.argv[0] = 'mailproxy'\n"
    "import os, select, threading, time, array\n"
    "ns = time.perf_counter_ns; ident = threading.get_ident\n"
    "log = array.array('q'); add = log.extend; tid = [None]\n"
    "import mmap; spin = memoryview(mmap.mmap(os.open({flag!r}, os.O_RDWR), 8)).cast('q')\n"
    "_read, _write = os.read, os.write\n"
    "_epoll = select.epoll\n"
    "class TracedEpoll:\n"   # (select.epoll cannot be subclassed)
    "    def __init__(self, *args):\n"
    "        self._e = _epoll(*args)\n"
    "    def __getattr__(self, name):\n"
    "        return getattr(self._e, name)\n"
    "    def poll(self, timeout=-1, maxevents=-1):\n"
    "        if ident() != tid[0]:\n"
    "            return self._e.poll(timeout, maxevents)\n"
    "        add((0, 0, 0, ns()))\n"
    "        ready = self._e.poll(timeout, maxevents)\n"
    "        add((1, len(ready), 0, ns()))\n"
    "        return ready\n"
    "select.epoll = TracedEpoll\n"
    "def read(fd, n):\n"
    "    data = _read(fd, n)\n"
    "    if ident() == tid[0]:\n"
    "        add((2, fd, len(data), ns()))\n"
    "    return data\n"
    "def write(fd, data):\n"
    "    if ident() != tid[0]:\n"
    "        return _write(fd, data)\n"
    "    t = ns(); sent = _write(fd, data)\n"
    "    add((3, fd, sent, t)); t = ns(); add((4, fd, sent, t))\n"
    "    if spin[0]:\n"   # (--spin: busy work after the write, in the rounds that ask for it)
    "        end = t + spin[0]\n"
    "        while ns() < end:\n"
    "            pass\n"
    "    return sent\n"
    "os.read, os.write = read, write\n"
    "{switch}"
    "import proxy.relay.engine as engine\n"
    "run = engine.Engine._run_thread\n"
    "def traced(self):\n"
    "    tid[0] = ident()\n"
    "{slice}"
    "    try:\n        run(self)\n"
    "    finally:\n        open({out!r}, 'wb').write(log.tobytes())\n"
    "engine.Engine._run_thread = traced\n"
    "from proxy.cli import main\n"
    "try:\n    main()\n"
    "finally:\n"
    "    [t.join(30) for t in threading.enumerate() if t.name == 'relay-engine']\n")


SLICE = (   # the engine thread's own EEVDF slice (Linux 6.12+: shorter slices preempt at wake-up)
    "    import ctypes, struct\n"
    "    attr = struct.pack('IIQiIQQQII', 56, 0, 0, 0, 0, {ns}, 0, 0, 0, 0)\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    rc = libc.syscall(314, 0, ctypes.c_char_p(attr), 0)\n"
    "    print('sched_setattr', rc, ctypes.get_errno(), file=sys.stderr)\n")


BARE = """# the floor: a plain epoll relay in Python, no parsing, no metrics, no lock, no other thread
import os, select, socket, sys
block = bytes(1 << 20)   # freed: glibc's mmap threshold rises past the 256 KB reads, as the
del block                # proxy's has (else each read is an mmap and a munmap)
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
epoll, peer, keep = select.epoll(), {}, []
epoll.register(listener.fileno(), select.EPOLLIN)
read, write, poll = os.read, os.write, epoll.poll
while True:
    for fd, _ in poll():
        if fd == listener.fileno():
            client, _ = listener.accept()
            upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                epoll.register(sock.fileno(), select.EPOLLIN)   # (blocking: writes go whole)
            peer[client.fileno()], peer[upstream.fileno()] = upstream.fileno(), client.fileno()
            keep += (client, upstream)
            continue
        data = read(fd, 262144)   # (ready: a blocking read returns what is there)
        if data:
            sent = write(peer[fd], data)
            while sent < len(data):
                sent += write(peer[fd], data[sent:])
        else:
            epoll.unregister(fd)
"""


def tasks(pid: int) -> dict[int, tuple[int, int, int]]:
    """Every thread of `pid` and of its descendants: tid -> (context switches, CPU ns,
    run-queue wait ns: runnable, not running, as after a wake-up)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            tids = list(pathlib.Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tids:
            try:
                status = (task / "status").read_text().split("\n")
                switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
                cpu, wait, _ = (int(v) for v in (task / "schedstat").read_text().split())
            except OSError:
                continue
            out[int(task.name)] = (switches, cpu, wait)
    return out


def per_op(before: dict[int, tuple[int, int, int]], after: dict[int, tuple[int, int, int]],
           ops: int) -> tuple[float, float, float]:
    """The busiest task's (most switches) context switches, CPU us and wait us per op."""
    best = (0.0, 0.0, 0.0)
    for tid, (sw, cpu, wait) in after.items():
        b = before.get(tid, (0, 0, 0))
        row = ((sw - b[0]) / ops, (cpu - b[1]) / ops / 1e3, (wait - b[2]) / ops / 1e3)
        if row[0] > best[0]:
            best = row
    return best


def total_op(before: dict[int, tuple[int, int, int]], after: dict[int, tuple[int, int, int]],
             ops: int) -> tuple[float, float, float]:
    """The sum over every task, per op."""
    sums = [0, 0, 0]
    for tid, row in after.items():
        b = before.get(tid, (0, 0, 0))
        for i in range(3):
            sums[i] += row[i] - b[i]
    return (sums[0] / ops, sums[1] / ops / 1e3, sums[2] / ops / 1e3)


def noop_times(imap: Imap, count: int, start: int) -> list[tuple[int, int, int]]:
    """`count` NOOPs: (before send, after send, answer read) each, perf_counter_ns."""
    sock, r, perf = imap.sock, imap.r, time.perf_counter_ns
    out = []
    for i in range(start, start + count):
        tag = b"n%d" % i
        t0 = perf()
        sock.send(tag + b" NOOP\r\n")
        t1 = perf()
        while not r.line().startswith(tag + b" "):
            pass
        out.append((t0, t1, perf()))
    return out


def retr_times(port: int, user: str, password: str, count: int) -> list[tuple[int, int, int]]:
    """A POP3 session of `count` RETRs (1..count): (before send, after send, answer whole)."""
    sock = connect(port)
    r = Reader(sock)
    r.line()
    for line in (b"USER " + user.encode(), b"PASS " + password.encode()):
        sock.sendall(line + b"\r\n")
        assert r.line().startswith(b"+OK")
    perf, out = time.perf_counter_ns, []
    for i in range(1, count + 1):
        t0 = perf()
        sock.send(b"RETR %d\r\n" % i)
        t1 = perf()
        assert r.line().startswith(b"+OK")
        while True:   # the body: up to the terminator
            end = r.buf.find(b"\r\n.\r\n", max(r.pos - 4, 0))
            if end >= 0:
                r.pos = end + 5
                break
            r.pos = len(r.buf)
            r._more()
        out.append((t0, t1, perf()))
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return out


def load_log(path: pathlib.Path) -> list[tuple[int, int, int, int]]:
    import array

    log = array.array("q")
    log.frombytes(path.read_bytes())
    return [tuple(log[i:i + 4]) for i in range(0, len(log), 4)]  # type: ignore[misc]


def timeline(log: list[tuple[int, int, int, int]], client: list[tuple[int, int, int]]
             ) -> dict[str, list[float]]:
    """Per round trip of `client`, the intervals of the module docstring (us): the engine's
    first read after the client's send is the client's side; the other, the upstream."""
    parts: dict[str, list[float]] = {k: [] for k in [*"ABCDEFGHIJ", "E2"]}
    parts["total"] = []
    j = 0
    for t0, _t1, t2 in client:
        while j < len(log) and log[j][3] < t0:   # the engine's first event after the send
            j += 1
        k, last_poll, rec, fd_client = j, 0, {}, -1
        while k < len(log) and log[k][3] <= t2 + 2_000_000:
            kind, fd, _, t = log[k]
            if kind == 1:
                last_poll = t
            elif kind == 0 and "wd" in rec and "E" not in rec:
                rec["E"] = t - rec["wd"]
            elif kind == 0 and "cd" in rec and "E2" not in rec:
                rec["E2"] = t - rec["cd"]
            elif kind == 2 and "r1" not in rec:
                rec["p1"], rec["r1"], fd_client = last_poll, t, fd
            elif kind == 3 and fd != fd_client and "r1" in rec and "w1" not in rec:
                rec["w1"] = t
            elif kind == 4 and fd != fd_client and "w1" in rec and "wd" not in rec:
                rec["wd"] = t
            elif kind == 2 and fd != fd_client and "wd" in rec and "r2" not in rec:
                rec["p2"], rec["r2"] = last_poll, t
            elif kind == 3 and fd == fd_client and "r2" in rec and "c1" not in rec:
                rec["c1"] = t
            elif kind == 4 and fd == fd_client and "c1" in rec:
                rec["cd"] = t   # (the last write of the answer, if it took several)
            if "E2" in rec:
                break
            k += 1
        j = k
        if not {"p1", "r1", "w1", "wd", "p2", "r2", "c1", "cd"} <= rec.keys():
            continue
        us = 1e-3
        parts["A"].append((rec["p1"] - t0) * us)
        parts["B"].append((rec["r1"] - rec["p1"]) * us)
        parts["C"].append((rec["w1"] - rec["r1"]) * us)
        parts["D"].append((rec["wd"] - rec["w1"]) * us)
        parts["E"].append(rec.get("E", 0) * us)
        parts["F"].append((rec["p2"] - rec["wd"]) * us)
        parts["G"].append((rec["r2"] - rec["p2"]) * us)
        parts["H"].append((rec["c1"] - rec["r2"]) * us)
        parts["I"].append((rec["cd"] - rec["c1"]) * us)
        parts["J"].append((t2 - rec["cd"]) * us)
        parts["E2"].append(rec.get("E2", 0) * us)
        parts["total"].append((t2 - t0) * us)
    return parts


LABELS = {
    "A": "client send -> engine poll returns (wake-up)",
    "B": "poll return -> client read done",
    "C": "Python before the upstream write",
    "D": "write upstream (syscall)",
    "E": "after the upstream write -> next poll",
    "F": "upstream write done -> poll returns (Dovecot + wake-ups)",
    "G": "poll return -> upstream read done",
    "H": "Python before the client write",
    "I": "write to the client (syscall)",
    "J": "client write done -> client has the answer",
    "E2": "after the client write -> next poll",
    "total": "round trip (client)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noops", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--retrs", type=int, default=0, help="POP3 RETRs per round instead")
    parser.add_argument("--base", default=None, help="this revision's proxy instead of the tree's")
    parser.add_argument("--switch", type=float, default=None,
                        help="sys.setswitchinterval(SECONDS) in the proxy (before it starts)")
    parser.add_argument("--slice", type=float, default=0,
                        help="the engine thread's EEVDF slice (us; sched_setattr sched_runtime)")
    parser.add_argument("--spin", type=float, default=0,
                        help="also rounds with this much busy work (us) after each engine write")
    parser.add_argument("--nginx", action="store_true", help="nginx's mail proxy in the rounds too")
    parser.add_argument("--untraced", action="store_true",
                        help="the same proxy without the wrappers in the rounds too")
    parser.add_argument("--bare", action="store_true",
                        help="a bare Python epoll relay in the rounds too (the floor of Python)")
    args = parser.parse_args()
    root = export(args.base) if args.base else REPO_ROOT
    out = pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-timeline-")) / "engine.log"
    switch = f"sys.setswitchinterval({args.switch})\n" if args.switch else ""
    flag = out.with_name("spin")   # ns of busy work after each engine write (0: none)
    flag.write_bytes(bytes(8))
    spin = memoryview(mmap.mmap(os.open(flag, os.O_RDWR), 8)).cast("q")
    slice_ = SLICE.format(ns=int(args.slice * 1000)) if args.slice else ""
    print(f"roundtrip_timeline {args.base or 'this tree'}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()}")
    mailbox = make_mailbox(max(args.retrs, 10))
    with Env("timeline") as env:
        user, password = env.user_with(mailbox)
        listeners = [{"name": "imap", "protocol": "imap"}, {"name": "pop3", "protocol": "pop3"}]
        probe = env.proxy(listeners, extra={"relay": {"engine": "epoll"}})
        probe.stop()   # (only its config was wanted: the traced proxy takes its ports)
        command = [sys.executable, "-c", TRACED.format(root=str(root), out=str(out),
                                                       switch=switch, slice=slice_,
                                                       flag=str(flag)),
                   "--log-level", "WARNING", "serve", "--config", str(probe.config_path)]
        proxy = QuietProxyProcess(probe.config, probe.tmp_path.with_name("traced"),
                                  command=command)
        env.on_close(proxy.stop)
        pid = proxy.pid
        ng = None
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port,
                                     env.dovecot.pop3_port)
            env.on_close(ng.stop)
        me = threading.get_native_id()
        times: dict[str, list[float]] = {}
        client: list[tuple[int, int, int]] = []
        # scheduler figures per op: proxy (busiest thread, whole process), nginx's worker,
        # Dovecot's processes (all), this client's thread
        sched: dict[str, list[tuple[float, float, float]]] = {}
        ports = {"direct": (env.dovecot.imap_port, env.dovecot.pop3_port),
                 "mailproxy": (proxy.port("imap"), proxy.port("pop3"))}
        if ng is not None:
            ports["nginx"] = (ng.imap_port, ng.pop3_port)
        if args.spin:
            ports[f"mailproxy+{args.spin:g}us"] = ports["mailproxy"]
        untraced = None
        if args.untraced:   # (the same tree's proxy without the wrappers: its CPU per op)
            if args.base:
                raise SystemExit("--untraced runs this tree's proxy: not with --base")
            untraced = env.proxy(listeners, extra={"relay": {"engine": "epoll"}})
            ports["untraced"] = (untraced.port("imap"), untraced.port("pop3"))
        bare = None
        if args.bare:
            upstream_port = env.dovecot.pop3_port if args.retrs else env.dovecot.imap_port
            bare = subprocess.Popen([sys.executable, "-c", BARE, str(upstream_port)],
                                    stdout=subprocess.PIPE, text=True)
            env.on_close(bare.kill)
            port = int(bare.stdout.readline())  # type: ignore[union-attr]
            ports["bare"] = (port, port)   # (to Dovecot's POP3 port with --retrs, else IMAP's)
        sessions = {}
        if not args.retrs:
            for label, (imap_port, _) in ports.items():
                if "+" in label:   # (the spin rounds: the same session)
                    sessions[label] = sessions["mailproxy"]
                    continue
                sessions[label] = imap = Imap(imap_port)
                imap.login(user, password)
                imap.command(b"SELECT INBOX")
                noop_times(imap, 200, 10**6)   # warm-up
        ops = args.retrs or args.noops
        for n in range(args.rounds):
            for label, (_, pop3_port) in ports.items():
                watched = {"proxy": pid, "dovecot": env.dovecot.master_pid or 0,
                           **({"nginx": ng.server.server.proc.pid} if ng is not None else {}),
                           **({"bare": bare.pid} if bare is not None else {}),
                           **({"untraced": untraced.pid} if untraced is not None else {})}
                spin[0] = int(args.spin * 1000) if "+" in label else 0
                before = {k: tasks(v) for k, v in watched.items()}
                before["client"] = tasks(os.getpid())
                if args.retrs:
                    got = retr_times(pop3_port, user, password, args.retrs)
                else:
                    got = noop_times(sessions[label], args.noops, n * args.noops)
                after = {k: tasks(v) for k, v in watched.items()}
                after["client"] = tasks(os.getpid())
                times.setdefault(label, []).extend((t2 - t0) / 1e3 for t0, _, t2 in got)
                if label == "mailproxy":
                    client += got
                sched.setdefault(f"{label}: proxy engine thread", []).append(
                    per_op(before["proxy"], after["proxy"], ops))
                sched.setdefault(f"{label}: proxy, all threads", []).append(
                    total_op(before["proxy"], after["proxy"], ops))
                for other in ("nginx", "bare", "untraced"):
                    if other in watched:
                        sched.setdefault(f"{label}: {other}, all", []).append(
                            total_op(before[other], after[other], ops))
                sched.setdefault(f"{label}: Dovecot, all processes", []).append(
                    total_op(before["dovecot"], after["dovecot"], ops))
                sched.setdefault(f"{label}: this client's thread", []).append(
                    per_op({me: before["client"].get(me, (0, 0, 0))},
                           {me: after["client"][me]}, ops))
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
    parts = timeline(load_log(out), client)
    shutil.rmtree(out.parent, ignore_errors=True)
    n = len(parts["total"])
    what = "RETR" if args.retrs else "NOOP"
    print(f"{n} of {len(client)} relayed {what}s matched")
    print(f"{'interval':<60} {'p50 us':>8} {'mean us':>8}")
    for key, label in LABELS.items():
        values = parts[key]
        print(f"{key:>5} {label:<54} {statistics.median(values):8.1f} "
              f"{statistics.fmean(values):8.1f}")
    sends = [(t1 - t0) / 1e3 for t0, t1, _ in client]
    print(f"{'':>5} {'client send() alone (in A)':<54} {statistics.median(sends):8.1f} "
          f"{statistics.fmean(sends):8.1f}")
    for label, values in times.items():
        print(f"{'':>5} {label + ' round trip':<54} {statistics.median(values):8.1f} "
              f"{statistics.fmean(values):8.1f}")
    crit = [c + h for c, h in zip(parts["C"], parts["H"], strict=True)]
    print(f"{'':>5} {'Python on the critical path (C + H)':<54} {statistics.median(crit):8.1f}")
    print(f"per {what}, median of rounds: context switches, CPU us, run-queue wait us")
    for label, rows in sched.items():
        sw, cpu, wait = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"  {label:<45} {sw:6.2f} {cpu:8.1f} {wait:8.1f}")

if __name__ == "__main__":
    main()
