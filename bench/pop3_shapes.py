"""Issue 16 lab: which shape of a user-space relay could bring a POP3 download near direct
Dovecot? Bare Python epoll relays (no parsing, no metrics: the floor of each shape), each in its
own process, against direct Dovecot and this tree's mailproxy, in interleaved rounds.

    .venv/bin/python bench/pop3_shapes.py [--messages 600] [--rounds 5] [--shapes bare splice ...]
                                          [--big] [--no-proxy]

Shapes (upstream = Dovecot's POP3, client = the benchmark's client):
  bare     read(256 KB) when readable, one blocking write to the peer (roundtrip_timeline --bare)
  drain    non-blocking reads until EAGAIN, then one write of what was read (fewer writes?)
  writev   as drain, the chunks written with one writev (no join copy)
  bigbuf   bare with SO_RCVBUF and SO_SNDBUF of 4 MB on both sockets
  splice   every upstream byte spliced socket -> pipe -> socket (no copy to user space, no
           parsing: the upper bound of a splice path; a real relay must still find the end of
           each answer, RFC 1939 3)
  peeksplice  splice with what a relay that finds each answer's end must add: FIONREAD, a
           peek at the answer's head (its status line) and one at the chunk's last 5 bytes
           (SO_PEEK_OFF, Linux 6.10+), then the splice of exactly those bytes
  quickack bare with TCP_QUICKACK set after each read

Per path and round: the whole download (USER/PASS, STAT, UIDL, RETR all, QUIT, as bench/clients.py
pop3_download, the bench's own), then the RETR p50 of a second session's RETRs one at a time.
Per RETR of the download: the CPU, run-queue wait and context switches of this client's thread,
Dovecot's processes and the relay (/proc schedstat, taken before the QUIT), and the relay's
wake-ups, reads and writes (counted in the relay). On this machine the client, the relay and
Dovecot take turns on one CPU (a loopback write wakes its reader on the writer's CPU), so the
sum of the three's CPU bounds the download's speed: "bound" is direct's sum over a path's, the
ratio it would reach if only CPU counted. `--big`: 100-500 KB messages instead of the bench's mix.
Needs root (Dovecot), like the other relay benchmarks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import random
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from clients import Pop3, pop3_download  # noqa: E402
from common import Env, Mailbox, _message, make_mailbox  # noqa: E402
from roundtrip_timeline import retr_times, tasks, total_op  # noqa: E402

RELAY = r"""
import fcntl, os, select, socket, sys
shape, upstream_port = sys.argv[1], int(sys.argv[2])
block = bytes(1 << 20)   # freed: glibc's mmap threshold rises past 256 KB reads, as the proxy's
del block
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
epoll, peer, keep, pipes, ups = select.epoll(), {}, {}, {}, set()
epoll.register(listener.fileno(), select.EPOLLIN)
read, write, poll, splice = os.read, os.write, epoll.poll, os.splice
counts = {"wakeups": 0, "reads": 0, "writes": 0, "up_reads": 0}
SIZE = 262144
FIONREAD, SO_PEEK_OFF, starts, multi = 0x541B, 42, {}, {}
while True:
    ready = poll()
    counts["wakeups"] += 1
    for fd, _ in ready:
        if fd == listener.fileno():
            client, _ = listener.accept()
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if shape == "bigbuf":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                if shape in ("drain", "writev"):
                    sock.setblocking(False)
                epoll.register(sock.fileno(), select.EPOLLIN)
            peer[client.fileno()], peer[upstream.fileno()] = upstream.fileno(), client.fileno()
            keep[client.fileno()], keep[upstream.fileno()] = client, upstream
            ups.add(upstream.fileno())
            if shape in ("splice", "peeksplice"):
                r, w = os.pipe()
                fcntl.fcntl(w, 1031, 1 << 20)   # F_SETPIPE_SZ
                pipes[upstream.fileno()] = (r, w)
            continue
        out = peer[fd]
        if fd in ups:
            counts["up_reads"] += 1
        if shape == "peeksplice" and fd in pipes:   # what a relay that sees each answer's end
            sock = keep[fd]                           # pays: the bytes there, a peek at the
            n = int.from_bytes(fcntl.ioctl(fd, FIONREAD, bytes(4)), "little")   # answer's head
            if not n:                                 # and at the tail, then the splice
                epoll.unregister(fd)
                continue
            n = min(n, 1 << 20)   # (what the pipe takes: the tail peeked is the one spliced)
            if starts.get(fd, True):
                sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
                head = sock.recv(min(n, 512), socket.MSG_PEEK)
                assert head[:3] in (b"+OK", b"-ER"), head
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, max(n - 5, 0))
            tail = sock.recv(5, socket.MSG_PEEK)
            starts[fd] = tail == b"\r\n.\r\n" or not multi.get(fd) and tail.endswith(b"\r\n")
            r, w = pipes[fd]
            n = splice(fd, w, n, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            counts["reads"] += 1
            while n:
                n -= splice(r, out, n, flags=os.SPLICE_F_MOVE)
                counts["writes"] += 1
            continue
        if shape == "splice" and fd in pipes:
            r, w = pipes[fd]
            n = splice(fd, w, 1 << 20, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            counts["reads"] += 1
            if not n:
                epoll.unregister(fd)
                continue
            while n:
                n -= splice(r, out, n, flags=os.SPLICE_F_MOVE)
                counts["writes"] += 1
            continue
        if shape in ("drain", "writev"):
            chunks = []
            while True:
                try:
                    data = read(fd, SIZE)
                except BlockingIOError:
                    break
                counts["reads"] += 1
                if not data:
                    break
                chunks.append(data)
            if not chunks:
                epoll.unregister(fd)
                if fd not in ups:   # the client left: report and reset
                    print(counts, flush=True)
                    counts = dict.fromkeys(counts, 0)
                continue
            sock = keep[out]
            sock.setblocking(True)
            if shape == "writev" and len(chunks) > 1:
                total, sent = sum(map(len, chunks)), os.writev(out, chunks)
                counts["writes"] += 1
                if sent < total:
                    sock.sendall(b"".join(chunks)[sent:])
            else:
                sock.sendall(b"".join(chunks) if len(chunks) > 1 else chunks[0])
                counts["writes"] += 1
            sock.setblocking(False)
            continue
        data = read(fd, SIZE)
        counts["reads"] += 1
        if fd not in ups:   # (peeksplice: does the answer to this command end at CRLF.CRLF?)
            multi[out] = data[:4].upper() in (b"RETR", b"UIDL", b"LIST", b"TOP ", b"CAPA")
        if shape == "quickack":
            keep[fd].setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if data:
            sent = write(out, data)
            counts["writes"] += 1
            while sent < len(data):
                sent += write(out, data[sent:])
                counts["writes"] += 1
        else:
            epoll.unregister(fd)
            if fd not in ups:   # the client left: report and reset
                print(counts, flush=True)
                counts = dict.fromkeys(counts, 0)
"""

SHAPES = ("bare", "drain", "writev", "bigbuf", "splice", "peeksplice", "quickack")


def big_mailbox(count: int) -> Mailbox:
    rng = random.Random(3)
    return Mailbox([_message(rng, i, rng.randint(100_000, 500_000)) for i in range(1, count + 1)])


def download(port: int, user: str, password: str, watched: dict[str, int]
             ) -> tuple[str, float, dict[str, tuple[float, float, float]]]:
    """pop3_download's session (USER/PASS, STAT, UIDL, RETR all, QUIT): its sha256, its
    seconds, and per RETR the context switches, CPU us and run-queue wait us of each watched
    process tree and of this client's thread, taken before the QUIT (Dovecot's pop3 process
    ends with it)."""
    me = threading.get_native_id()
    t0 = time.perf_counter()
    before = {k: tasks(v) for k, v in watched.items()}
    before["client"] = {me: tasks(os.getpid())[me]}
    pop = Pop3(port)
    pop.login(user, password)
    count = int(pop.command(b"STAT").split()[1])
    pop.multiline(b"UIDL", hashlib.sha256())
    digest = hashlib.sha256()
    for i in range(1, count + 1):
        pop.multiline(b"RETR %d" % i, digest)
    after = {k: tasks(v) for k, v in watched.items()}
    after["client"] = {me: tasks(os.getpid())[me]}
    pop.quit()
    elapsed = time.perf_counter() - t0
    return digest.hexdigest(), elapsed, {k: total_op(before[k], after[k], count) for k in after}


def retr_p50(port: int, user: str, password: str, count: int) -> float:
    """RETR 1..count one at a time in one session: the p50 round trip in us."""
    return statistics.median((done - sent) / 1e3
                             for sent, _, done in retr_times(port, user, password, count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--big", action="store_true", help="100-500 KB messages")
    parser.add_argument("--pin", action="store_true",
                        help="the relays (and mailproxy) on CPU 1, this client and Dovecot on CPU 0")
    parser.add_argument("--no-proxy", action="store_true", help="leave mailproxy out")
    args = parser.parse_args()
    box = big_mailbox(args.messages) if args.big else make_mailbox(args.messages)
    print(f"pop3_shapes {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{len(box.messages)} msgs, {box.total / 1e6:.1f} MB, load {os.getloadavg()}", flush=True)
    with Env("shapes") as env:
        user, password = env.user_with(box)
        ports: dict[str, int] = {"direct": env.dovecot.pop3_port}
        pids: dict[str, int] = {}
        relays: dict[str, subprocess.Popen] = {}
        if not args.no_proxy:
            proxy = env.proxy([{"name": "pop3", "protocol": "pop3"}])
            ports["mailproxy"], pids["mailproxy"] = proxy.port("pop3"), proxy.pid
        for shape in args.shapes:
            proc = subprocess.Popen([sys.executable, "-c", RELAY, shape, str(env.dovecot.pop3_port)],
                                    stdout=subprocess.PIPE, text=True)
            env.on_close(proc.kill)
            ports[shape] = int(proc.stdout.readline())  # type: ignore[union-attr]
            pids[shape], relays[shape] = proc.pid, proc
        if args.pin:   # (Dovecot's session processes inherit its master's affinity)
            os.sched_setaffinity(0, {0})
            for task in os.listdir(f"/proc/{env.dovecot.master_pid}/task"):
                os.sched_setaffinity(int(task), {0})
            for pid in pids.values():
                for task in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(task), {1})
        for label, port in ports.items():   # warm-up, and the digests agree
            count, _, digest, _ = pop3_download(port, user, password)
            assert digest == box.sha256, (label, digest)
            if label in relays:
                relays[label].stdout.readline()  # type: ignore[union-attr]
        n = len(box.messages)
        seconds: dict[str, list[float]] = {k: [] for k in ports}
        p50: dict[str, list[float]] = {k: [] for k in ports}
        cpu: dict[str, list[float]] = {k: [] for k in pids}
        calls: dict[str, dict] = {}
        per: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for _ in range(args.rounds):
            for label, port in ports.items():
                watched = {"dovecot": env.dovecot.master_pid or 0,
                           **({"relay": pids[label]} if label in pids else {})}
                digest, elapsed, sched = download(port, user, password, watched)
                assert digest == box.sha256, label
                for who, row in sched.items():
                    per.setdefault((label, who), []).append(row)
                if label in pids:
                    cpu[label].append(sched["relay"][1])
                if label in relays:   # (its counts of that session, printed when it ended)
                    calls[label] = eval(relays[label].stdout.readline())  # type: ignore[union-attr]  # noqa: S307
                seconds[label].append(elapsed)
                p50[label].append(retr_p50(port, user, password, min(n, 300)))
                if label in relays:
                    relays[label].stdout.readline()  # type: ignore[union-attr]
        print(f"load at the end {os.getloadavg()}")
        direct_s = statistics.median(seconds["direct"])
        direct_p = statistics.median(p50["direct"])
        print(f"{'path':<10} {'download s':>10} {'x direct':>9} {'RETR p50 us':>12} {'p50/direct':>10} "
              f"{'CPU us/RETR':>11}  per RETR (last round): wake-ups, reads, writes, upstream reads")
        for label in ports:
            s, p = statistics.median(seconds[label]), statistics.median(p50[label])
            c = f"{statistics.median(cpu[label]):11.1f}" if label in cpu else f"{'':>11}"
            k = calls.get(label)
            rate = (", ".join(f"{k[x] / n:.2f}" for x in ("wakeups", "reads", "writes", "up_reads"))
                   if k else "")
            print(f"{label:<10} {s:10.3f} {direct_s / s:8.2f}x {p:12.1f} {p / direct_p:9.2f}x {c}  {rate}")
        print("per RETR of the download, medians of rounds: CPU us / run-queue wait us / context"
              " switches; 'serial' = client + Dovecot + relay CPU (one CPU runs the chain),"
              " 'bound' = direct's serial sum over this path's (the ratio if only CPU counted)")
        base = sum(statistics.median(r[1] for r in per[("direct", w)]) for w in ("client", "dovecot"))
        for label in ports:
            cells, serial = [], 0.0
            for who in ("client", "dovecot", "relay"):
                rows = per.get((label, who))
                if rows:
                    c, w, sw = (statistics.median(r[i] for r in rows) for i in (1, 2, 0))
                    serial += c
                    cells.append(f"{who} {c:.1f}/{w:.1f}/{sw:.2f}")
            print(f"  {label:<10} " + ", ".join(cells) + f"; serial {serial:.1f}, "
                  f"bound {base / serial:.2f}x")
        print("rounds, download s: " + "; ".join(
            f"{k} {min(v):.3f}..{max(v):.3f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
