"""Profile the relay with py-spy (issue 16, step 1): where the proxy's CPU goes per login, per NOOP
and per POP3 RETR. Not a test, not a benchmark: it prints shares of samples, not speeds.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_relay.py [--seconds 20] [--rate 250] [--out DIR] [--tls] [--base REV]

For each workload, one client loops against a private Dovecot through mailproxy (metrics on, as
shipped) while `py-spy record --format raw --nolineno` samples the proxy process (idle samples, i.e.
the event loop waiting in epoll, are not recorded by py-spy). The raw stacks are kept in DIR and
summarised: top functions by own samples and by total (inclusive) samples, as shares of all samples.
`--tls`: the client speaks implicit TLS to the proxy (relayed in clear to Dovecot). `--base REV`:
profile another revision's proxy (exported as bench/ab_relay.py does) instead of this tree's.
`--engine tasks|epoll`: this tree's proxy with that `relay.engine`. `--native`: C frames too
(OpenSSL, the interpreter's own functions). `--perf`: `perf record` instead (on-CPU samples only),
summed by shared object and by C symbol.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ab_relay import export, proxy_from  # noqa: E402
from clients import Imap, client_tls_context, imap_session, pop3_download  # noqa: E402
from common import Env, make_mailbox, small_mailbox, tls_listener  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    if not pathlib.Path(found).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: float, rate: int, out: pathlib.Path, work, gil: bool = False,
           native: bool = False) -> None:
    """Sample `pid` for `seconds` while `work()` runs in a loop in a thread."""
    spy = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--format", "raw", "--nolineno",
                            "--rate", str(rate), "--duration", str(round(seconds)), "--output", str(out),
                            *(["--gil"] if gil else []), *(["--native"] if native else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    _while_working(work, lambda: errors.append(spy.communicate(timeout=seconds + 60)[1]))
    if spy.returncode != 0:
        sys.exit(f"py-spy failed: {errors[0].decode(errors='replace')}")


def record_perf(pid: int, seconds: float, rate: int, out: pathlib.Path, work) -> None:
    """`perf record` of `pid` (on-CPU samples only, C frames: OpenSSL, the interpreter, the
    kernel) for `seconds` while `work()` runs in a loop in a thread."""
    _while_working(work, lambda: subprocess.run(
        ["perf", "record", "-q", "-F", str(rate), "-p", str(pid), "-o", str(out), "--", "sleep",
         str(round(seconds))], check=True, stdout=subprocess.DEVNULL))


def _while_working(work, sample) -> None:
    """Run `work()` over and over in a thread for as long as `sample()` takes."""
    done = threading.Event()
    count = [0]

    def loop() -> None:
        while not done.is_set():
            work()
            count[0] += 1

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        sample()
    finally:
        done.set()
        worker.join(timeout=120)
    print(f"  {count[0]} iterations while sampling")


def summarise_perf(path: pathlib.Path, top: int) -> None:
    """Own samples by shared object, then by symbol (perf report)."""
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "--no-children",
                                 "--sort", sort, "--percent-limit", "0.7"],
                                capture_output=True, text=True, check=True).stdout
        lines = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
        print(f"  by {sort}:")
        for line in lines[:top]:
            print(f"    {line.strip()}")


def summarise(path: pathlib.Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part)
            if m:  # skip the "process ..." / "thread ..." pseudo-frames
                frames.append(f"{m['func']} ({m['file']})")
        if not frames:
            continue
        count = int(n)
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    print(f"  {samples} samples")
    for frame in [frame for frame, count in total.items() if count == samples]:
        del total[frame]  # the entry point and trio.run: on every stack, they say nothing
    for title, counter in (("own", own), ("total", total)):
        print(f"  top {top} by {title} samples:")
        for frame, count in counter.most_common(top):
            print(f"    {100 * count / samples:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--messages", type=int, default=300, help="messages in the POP3 mailbox")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="keep raw stacks here")
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL (drops time in syscalls and runnable waits)")
    parser.add_argument("--perf", action="store_true",
                        help="perf record instead of py-spy: on-CPU samples by shared object and C symbol")
    parser.add_argument("--native", action="store_true",
                        help="C frames too (OpenSSL, the interpreter): py-spy --native")
    parser.add_argument("--only", nargs="*", default=["login", "noop", "retr"])
    parser.add_argument("--tls", action="store_true", help="implicit TLS from the client")
    parser.add_argument("--base", default=None, help="profile this revision's proxy instead")
    parser.add_argument("--engine", choices=["tasks", "epoll"], default=None,
                        help="relay.engine of this tree's proxy (default: the config default)")
    args = parser.parse_args()
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="mailproxy-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    base_root = export(args.base) if args.base else None
    with Env("profile", tls=args.tls) as env:
        sess_user, sess_pw = env.user_with(small_mailbox(10))
        box = make_mailbox(args.messages) if "retr" in args.only else None
        bulk_user, bulk_pw = env.user_with(box) if box else ("", "")
        if args.tls:
            listeners = [tls_listener(env, "imap", "imap"), tls_listener(env, "pop3", "pop3")]
            ctx = client_tls_context(str(env.ca_file))
        else:
            listeners = [{"name": "imap", "protocol": "imap"}, {"name": "pop3", "protocol": "pop3"}]
            ctx = None
        proxy = proxy_from(env, base_root, listeners, args.engine)
        imap_port, pop3_port = proxy.port("imap"), proxy.port("pop3")
        imap_session(imap_port, sess_user, sess_pw, ctx)  # warm-up
        workloads = {
            "login": lambda: imap_session(imap_port, sess_user, sess_pw, ctx),
            "retr": lambda: pop3_download(pop3_port, bulk_user, bulk_pw, ctx),
        }
        if "noop" in args.only:
            client = Imap(imap_port, ctx)
            client.login(sess_user, sess_pw)
            client.command(b"SELECT INBOX")
            workloads["noop"] = lambda: client.noop_rtt_ns(200)
        for name in args.only:
            print(f"{name}: sampling pid {proxy.pid} for {args.seconds:.0f}s at {args.rate} Hz")
            if args.perf:
                data = out / f"{name}.perf.data"
                record_perf(proxy.pid, args.seconds, args.rate, data, workloads[name])
                summarise_perf(data, args.top)
                continue
            raw = out / f"{name}.txt"
            record(proxy.pid, args.seconds, args.rate, raw, workloads[name], args.gil, args.native)
            summarise(raw, args.top)
        print(f"raw stacks in {out}")
    if base_root is not None:
        shutil.rmtree(base_root, ignore_errors=True)


if __name__ == "__main__":
    main()
