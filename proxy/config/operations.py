"""What operators run the proxy with: `logging:`, `metrics:`, `auth_throttle:`, `admin:`,
`workers`, `relay:` and `gc:`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, StrictBool, StrictInt, StrictStr

from .values import STRICT, Duration, ListenAddress, Problem, SecretValue

if TYPE_CHECKING:
    from .loader import Config

MAX_WORKERS = 256
# relay.gil_switch_interval: sys.setswitchinterval while the relay engine runs, the longest a
# relayed command's step waits for the GIL held by trio's busy thread (CPython's default 5 ms).
# bench/gil_handoff.py: a read + write hand-off beside a busy thread, p99 7.4 ms at 5 ms, 38 us
# at 0.2 ms; CPU-bound threads of the process +1.3% (bench/gil_cpu_cost.py; bench/README.md,
# "login storm")
GIL_SWITCH_INTERVAL = 0.0002
GIL_SWITCH_INTERVAL_RANGE = (0.00001, 0.005)   # 10 us (CPython counts whole us) to 5 ms
# relay.splice_min_literal: an upstream's IMAP literal payload with at least this many bytes
# still to come goes to the client through a pipe (os.splice), never read into Python
# (proxy/relay/engine_splice.py). bench/ab_relay.py --size, proxy CPU per MB against no splice:
# 1 MB messages -35 to -38%, 250 KB -9%, 100 KB none (+2% at 64 KB, +16% at 16 KB): the
# splices and wake-ups cost what the copies saved (bench/README.md, "splice")
SPLICE_MIN_LITERAL = 128 * 1024
# relay.tls_handshake_threads: threads running the CPU-heavy steps of implicit-TLS server
# handshakes in the engine, off its thread (proxy/relay/tls_handshake_pool.py; 0: in the
# engine's thread). One: with the engine's thread, two cores busy (bench/README.md, "TLS
# handshakes off the engine's thread")
TLS_HANDSHAKE_THREADS = 1
TLS_HANDSHAKE_THREADS_MAX = 64
_MODE_RE = re.compile(r"^0?[0-7]{3}$")


def parse_workers(value: Any) -> Any:
    """`workers`: 1 to MAX_WORKERS, or `auto` (proxy/workers/count.py)."""
    if value == "auto" or (type(value) is int and 1 <= value <= MAX_WORKERS):
        return value
    raise ValueError(f"expected 1 to {MAX_WORKERS} processes, or auto (one per CPU)")


Workers = Annotated[StrictInt | Literal["auto"], BeforeValidator(parse_workers)]


def check_workers(config: Config) -> list[Problem]:
    """More than one worker only with a gateway store they can share."""
    gateway = config.gateway
    if config.workers != 1 and gateway is not None and "://" not in gateway.store and \
            any(lst.mode == "gateway" for lst in config.listeners):
        return [(("workers",), f"{config.workers} with a gateway listener needs gateway.store "
                               "on PostgreSQL (postgresql://...): a SQLite store belongs to one "
                               "process; use workers: 1 or a PostgreSQL store")]
    return []


@dataclass(frozen=True, slots=True)
class Logging:
    __pydantic_config__ = STRICT
    user: Literal["full", "domain", "hash"] = "full"
    hash_key: SecretValue | None = None  # salt for `user: hash`; random per process otherwise


@dataclass(frozen=True, slots=True)
class Relay:
    """How relay sessions are driven once logged in: `epoll` (the default: one engine per
    process owns the sessions' sockets, plain or TLS, no task per session:
    proxy/relay/engine.py) or `tasks` (two pump tasks and a watchdog per session). COMPRESS
    sessions are handed back to tasks. While the engine runs, the process's GIL switch interval
    is `gil_switch_interval` (never raised above what it was; restored at the end). With
    `engine_login` (the default) a plain IMAP relay session is run by the engine from its
    greeting, its login too where the route needs no I/O (proxy/relay/engine_login.py). With
    `engine_accept` (the default, with `engine_login`) the engine's thread also accepts on a
    plain IMAP relay listener without PROXY protocol itself: such a session gets no trio task
    unless it needs one (proxy/relay/engine_accept.py). An upstream's IMAP literal payload
    with `splice_min_literal` bytes or more still to come goes to the client by os.splice on
    plain sides (proxy/relay/engine_splice.py; None: never). An implicit-TLS client's handshake
    steps in the engine run on `tls_handshake_threads` threads of their own
    (proxy/relay/tls_handshake_pool.py; 0: in the engine's thread)."""

    __pydantic_config__ = STRICT
    engine: Literal["tasks", "epoll"] = "epoll"
    gil_switch_interval: Duration = GIL_SWITCH_INTERVAL
    engine_login: bool = True
    engine_accept: bool = True
    splice_min_literal: StrictInt | None = SPLICE_MIN_LITERAL
    tls_handshake_threads: StrictInt = TLS_HANDSHAKE_THREADS


def check_relay(relay: Relay) -> list[Problem]:
    if relay.splice_min_literal is not None and relay.splice_min_literal < 1:
        return [(("relay", "splice_min_literal"), "expected a size in bytes (1 or more), or "
                 "null to never splice")]
    if not 0 <= relay.tls_handshake_threads <= TLS_HANDSHAKE_THREADS_MAX:
        return [(("relay", "tls_handshake_threads"),
                 f"expected 0 (the engine's own thread) to {TLS_HANDSHAKE_THREADS_MAX} threads")]
    low, high = GIL_SWITCH_INTERVAL_RANGE
    if not low <= relay.gil_switch_interval <= high:
        return [(("relay", "gil_switch_interval"),
                 f"expected {low * 1000:g}ms to {high * 1000:g}ms (CPython's default is 5ms)")]
    return []


# gc.thresholds: CPython's (700, 10, 10) collects the youngest generation every 700 net
# container allocations and the whole heap every 100 young collections (and a quarter more
# long-lived objects). bench/gateway_fairness.py --gc, 10,000 messages, with gc.freeze():
# the longest collection during STORE/COPY/SORT 64-80 ms at (700, 10, 10), 26-41 ms frozen,
# 10 ms or less frozen with these (bench/README.md, "garbage collector")
GC_THRESHOLDS = (20_000, 20, 100)
GC_THRESHOLD_RANGES = ((100, 10_000_000), (1, 10_000), (1, 10_000))


@dataclass(frozen=True, slots=True)
class Collector:
    """The process's cyclic garbage collector (proxy/collector.py): `freeze_after_startup`
    moves every object alive once start-up is done out of the collector's reach for good
    (gc.freeze()), and `thresholds` are gc.set_threshold's three generation thresholds."""

    __pydantic_config__ = STRICT
    freeze_after_startup: StrictBool = True
    thresholds: tuple[StrictInt, StrictInt, StrictInt] = GC_THRESHOLDS


def check_collector(collector: Collector) -> list[Problem]:
    problems: list[Problem] = []
    for n, (value, (low, high)) in enumerate(zip(collector.thresholds, GC_THRESHOLD_RANGES,
                                                 strict=True)):
        if not low <= value <= high:
            problems.append((("gc", "thresholds", n), f"expected {low} to {high}"))
    return problems


@dataclass(frozen=True, slots=True)
class Metrics:
    __pydantic_config__ = STRICT
    address: ListenAddress


@dataclass(frozen=True, slots=True)
class AuthThrottle:
    """Failed-login throttling per client IP and per user (proxy/net/throttle.py)."""

    __pydantic_config__ = STRICT
    enabled: StrictBool = True
    base_delay: Duration = 0.5     # delay of the first failure's reply, doubled per failure
    max_delay: Duration = 8.0
    window: Duration = 300.0       # failures older than this are forgotten
    block_after: StrictInt = 10    # failures within the window before refusing an IP, or a user from an IP
    user_block_after: StrictInt = 100   # failures from all IPs before refusing a user everywhere
    block_for: Duration = 300.0


def _mode_text(value: Any) -> Any:
    """A file mode as written: YAML reads an unquoted `0660` as the number 0o660."""
    return f"0{value:o}" if isinstance(value, int) and not isinstance(value, bool) else value


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin endpoint (proxy/admin.py), off unless configured: HTTP on `address` with a
    bearer token, and/or on the Unix socket `socket`, where the file mode is the access control
    (no token: only local users the mode lets in can connect, as with doveadm's socket)."""

    __pydantic_config__ = STRICT
    address: ListenAddress | None = None
    token: SecretValue | None = None
    socket: Path | None = None
    socket_mode: Annotated[StrictStr, BeforeValidator(_mode_text)] = "0600"

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)


def check_admin(admin: Admin | None) -> list[Problem]:
    errors: list[Problem] = []
    if admin is None:
        return errors
    if admin.address is None and admin.socket is None:
        errors.append((("admin",), "give address (HTTP with a token) or socket (a Unix socket), "
                                   "or both"))
    if admin.address is not None and admin.token is None:
        errors.append((("admin", "token"), "admin.address needs a token (the socket needs none)"))
    if admin.address is None and admin.token is not None:
        errors.append((("admin", "token"), "a token is only checked on admin.address; the socket's "
                                           "file mode controls who may use it"))
    if not _MODE_RE.match(admin.socket_mode):
        errors.append((("admin", "socket_mode"), "expected an octal file mode such as 0600 or 0660"))
    return errors
