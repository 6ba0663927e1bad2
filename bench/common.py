"""Shared set-up, timing and reporting for the relay benchmarks (scripts, not tests).

- `Env`: a private directory that Dovecot's unprivileged processes can traverse, one Dovecot (plain, or
  with TLS from a trustme CA), mail users, mailbox generation, and mailproxy / nginx processes; all torn
  down by `close()`.
- `make_mailbox(n)`: a deterministic mixed-size mailbox (CRLF, no line starts with "."), so the bytes
  a client fetches over IMAP (BODY[]) and POP3 (RETR, dot-unstuffed) equal the delivered bytes.
- `interleave(rounds, {label: fn})`: runs A, B, (C,) A, B, ... and collects each fn's result per label.
- `Table`: fixed-width table with medians and ratios.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support.dovecot import Dovecot, start_dovecot  # noqa: E402
from support.proxyproc import ProxyProcess, ProxyStartError  # noqa: E402


class QuietProxyProcess(ProxyProcess):
    """ProxyProcess for a proxy run below INFO: the `ready` event is not logged, so it is ready once
    every listener answers with a greeting."""

    def _wait_ready(self, timeout: float) -> None:
        import socket

        deadline = time.monotonic() + timeout
        pending = set(self._ports.values())
        while pending:
            code = self._proc.poll()
            if code is not None:
                raise ProxyStartError(f"proxy exited with {code}: {self.command}\n{self.logs()[-3000:]}")
            if time.monotonic() > deadline:
                raise ProxyStartError(f"proxy not listening after {timeout:.0f}s\n{self.logs()[-3000:]}")
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        pending.discard(port)  # accepted (a TLS listener would wait for our hello)
                except OSError:
                    pass
            if pending:
                time.sleep(0.05)


# -- mailbox -------------------------------------------------------------------------------------------

@dataclass
class Mailbox:
    messages: list[bytes]
    sha256: str = ""
    total: int = 0

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for message in self.messages:
            digest.update(message)
        self.sha256 = digest.hexdigest()
        self.total = sum(len(m) for m in self.messages)


def _message(rng: random.Random, index: int, size: int) -> bytes:
    header = (f"From: Sender {index} <sender{index % 97}@example.org>\r\n"
              f"To: Bench User <bench@example.com>\r\n"
              f"Subject: benchmark message {index} of size {size}\r\n"
              f"Date: Mon, 01 Jan 2024 {index % 24:02d}:{index % 60:02d}:00 +0000\r\n"
              f"Message-ID: <bench-{index}@example.org>\r\n"
              "MIME-Version: 1.0\r\n"
              "Content-Type: application/octet-stream\r\n"
              "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii")
    import base64
    raw = rng.randbytes(max(0, size - len(header)) * 3 // 4 + 57)
    text = base64.encodebytes(raw).replace(b"\n", b"\r\n")  # 76-char lines, none starting with "."
    body = text[: max(0, size - len(header))]
    cut = body.rfind(b"\r\n")
    body = body[: cut + 2] if cut >= 0 else b"x\r\n"
    return header + body


def make_mailbox(count: int, seed: int = 1) -> Mailbox:
    """`count` messages: ~1% 1-2.5 MB, ~3% 50-500 KB, the rest 2-30 KB (about 40 KB average)."""
    rng = random.Random(seed)
    messages = []
    for index in range(1, count + 1):
        roll = rng.random()
        if roll < 0.01:
            size = rng.randint(1_000_000, 2_500_000)
        elif roll < 0.04:
            size = rng.randint(50_000, 500_000)
        else:
            size = rng.randint(2_000, 30_000)
        messages.append(_message(rng, index, size))
    return Mailbox(messages)


def small_mailbox(count: int = 10) -> Mailbox:
    rng = random.Random(7)
    return Mailbox([_message(rng, i, 3000) for i in range(1, count + 1)])


PROXY_LOG_LEVEL = "WARNING"  # relay.py --proxy-log-level
RELAY_ENGINE = ""  # relay.py --engine: the proxies' relay.engine ("": the default)

# -- processes -----------------------------------------------------------------------------------------

class Env:
    """Everything one benchmark starts; `close()` stops it all (also on errors)."""

    def __init__(self, name: str, *, tls: bool = False, dovecot_config: str = ""):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix=f"mailproxy-bench-{name}-"))
        self.root.chmod(0o711)
        self._closers: list[Callable[[], Any]] = []
        self.ca_file: pathlib.Path | None = None
        self.cert: tuple[pathlib.Path, pathlib.Path] | None = None
        if tls:
            self._make_cert()
        self.dovecot: Dovecot = start_dovecot(self.root, tls=self.cert, extra_config=dovecot_config)
        self._closers.append(self.dovecot.stop)
        self._proxies = 0

    def _make_cert(self) -> None:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        tls_dir = self.root / "tls"
        tls_dir.mkdir(mode=0o755)
        cert, key, ca_file = tls_dir / "cert.pem", tls_dir / "key.pem", tls_dir / "ca.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(ca_file))
        for path in (cert, key, ca_file):
            path.chmod(0o644)  # Dovecot reads them as root, but keep them simple
        self.cert = (cert, key)
        self.ca_file = ca_file

    def user_with(self, mailbox: Mailbox, name: str | None = None) -> tuple[str, str]:
        user, password = self.dovecot.add_user(name)
        for message in mailbox.messages:
            self.dovecot.deliver(user, message, flags="S")
        return user, password

    def proxy(self, listeners: list[dict[str, Any]], *, metrics: bool = False,
              log_level: str | None = None,
              lookups: list[dict[str, Any]] | None = None,
              extra: dict[str, Any] | None = None) -> ProxyProcess:
        """mailproxy relaying to this Dovecot (plain upstream ports) with the given listeners
        (and `lookups:` asked before the route when given; `extra` top-level keys)."""
        self._proxies += 1
        config: dict[str, Any] = {
            "listeners": [{"mode": "relay", "address": "127.0.0.1:0", "tls": "none",
                           "allow_plaintext_auth": True, "max_connections_per_ip": 100000,
                           **listener} for listener in listeners],
            "upstreams": {"main": {"host": "127.0.0.1",
                                   "imap": {"port": self.dovecot.imap_port, "tls": "none"},
                                   "pop3": {"port": self.dovecot.pop3_port, "tls": "none"}}},
            "routes": [{"match": "*", "upstream": "main"}],
        }
        if metrics:
            config["metrics"] = {"address": "127.0.0.1:0"}
        if lookups:
            config["lookups"] = lookups
        if RELAY_ENGINE:
            config["relay"] = {"engine": RELAY_ENGINE}
        config.update(extra or {})
        log_level = log_level or PROXY_LOG_LEVEL
        cls = ProxyProcess if log_level.upper() in ("DEBUG", "INFO") else QuietProxyProcess
        proc = cls(config, self.root / f"proxy-{self._proxies}",
                            extra_args=["--log-level", log_level])
        self._closers.append(proc.stop)
        return proc

    def on_close(self, fn: Callable[[], Any]) -> None:
        self._closers.append(fn)

    def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                print(f"teardown: {exc!r}", file=sys.stderr)
        self._closers.clear()
        if not os.environ.get("MAILPROXY_KEEP_BENCH_DIRS"):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tls_listener(env: Env, name: str, protocol: str) -> dict[str, Any]:
    assert env.cert is not None
    cert, key = env.cert
    return {"name": name, "protocol": protocol, "tls": "implicit",
            "certificates": [{"cert": str(cert), "key": str(key)}]}


# -- interleaving and statistics -----------------------------------------------------------------------

def interleave(rounds: int, runners: dict[str, Callable[[], Any]],
               only_first: dict[str, int] | None = None) -> dict[str, list[Any]]:
    """Round r runs every runner once, in order (A, B, C, A, B, C, ...). A runner listed in `only_first`
    with k runs only in the first k rounds (for a very slow contender)."""
    results: dict[str, list[Any]] = {label: [] for label in runners}
    for round_no in range(rounds):
        for label, fn in runners.items():
            if only_first and label in only_first and round_no >= only_first[label]:
                continue
            results[label].append(fn())
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([_fmt(c) for c in cells])

    def render(self) -> str:
        widths = [max(len(str(x)) for x in column) for column in zip(self.columns, *self.rows, strict=True)]
        line = "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)) + " |"
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = ["| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                + " |" for row in self.rows]
        return "\n".join([f"\n### {self.title}\n", line, sep, *body])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def ratio(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.4f}x"


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User+system CPU of `pid` (with `children`: plus its reaped children and its live direct
    children, which is how Dovecot's per-session imap processes are counted)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    fields = stat(pid)
    total = sum(int(x) for x in fields[11:13 + (2 if children else 0)])
    if children:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != pid:
                try:
                    child = stat(int(entry))
                except OSError:
                    continue
                if int(child[1]) == pid:
                    total += sum(int(x) for x in child[11:15])
    return total / ticks


def now() -> float:
    return time.perf_counter()
