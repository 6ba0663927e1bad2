"""What a session can see: the process-wide runtime and its own per-connection record, and the
small helpers every session uses (command metering, byte counters, the drain notice)."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Protocol, TypedDict

import trio

from .. import logs
from ..config import Config, Listener
from ..metrics import Metrics
from ..net.conn import Conn
from ..net.throttle import Throttle
from ..net.tls import ServerTLS, UpstreamTLS
from ..oauth2 import Brokers
from ..routing.chain import Lookups, tls_settings
from ..routing.pool import HostHealth
from .connect_early import EarlyConnection, EarlyTarget, early_targets
from .early_login import KnownGreetings
from .failures import Close
from .routing import log_user
from .upstream import Connector, tcp_connect
from .warm_pool import WarmPools


class Drain:
    """The process's drain (SIGTERM). Sessions `subscribe` a plain callback, called once when
    the drain starts (it may cancel a scope, never wait), instead of each running a watcher
    task: one set of callbacks for the whole process costs nothing per session but a set add.
    `wait()` is there for the few long-lived tasks that prefer to block on it."""

    __slots__ = ("_event", "_callbacks")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._callbacks: set[Callable[[], None]] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        if self._event.is_set():
            return
        self._event.set()
        callbacks, self._callbacks = self._callbacks, set()
        for callback in callbacks:
            callback()

    async def wait(self) -> None:
        await self._event.wait()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the drain starts (at once if it has started)."""
        if self._event.is_set():
            callback()
        else:
            self._callbacks.add(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)

    def subscribed(self) -> int:
        """How many callbacks wait for the drain (one per session waiting on it)."""
        return len(self._callbacks)


class CloseSession(Exception):
    """End the session now; any last words (BYE, -ERR) have already been sent.
    `reason` is why (the session_end log line's reason)."""

    def __init__(self, reason: Close):
        super().__init__(reason.value)
        self.reason = reason


@dataclass
class Runtime:
    """Objects shared by every session of the process. Replaced as a whole on reload, so a
    session keeps the runtime (config, certificates) it started with; `metrics`, `drain`,
    `throttle` and `host_health` are carried over from one runtime to the next."""

    config: Config
    metrics: Metrics
    upstream_tls: UpstreamTLS
    server_tls: dict[str, ServerTLS]  # listener name -> its certificates
    drain: Drain                      # set when the process drains (SIGTERM)
    throttle: Throttle                # auth-failure throttling, shared across reloads
    connect: Connector = tcp_connect  # how upstream TCP connections are made (tests: a fake)
    lookups: Lookups | None = None    # this config's `lookups:` (proxy/routing), asked first
    host_health: HostHealth = field(default_factory=HostHealth)  # pool hosts (Health.hosts)
    oauth2: Brokers = field(default_factory=Brokers)  # brokered upstream logins (proxy/oauth2)
    # what each upstream announced before login (early logins, session/early_login.py); per
    # runtime, so a reload forgets them
    known_greetings: KnownGreetings = field(default_factory=KnownGreetings)
    # connections opened and greeted ahead of logins (warm_pool:; relay/warm_fill.py fills
    # them); per runtime: a reload closes the old runtime's
    warm_pools: WarmPools = field(default_factory=WarmPools)
    # protocol -> the upstream its sessions connect to at accept (connect_early:)
    early_targets: dict[str, EarlyTarget] = field(default_factory=dict)

    @classmethod
    def build(cls, config: Config, metrics: Metrics | None = None, *,
              drain: Drain | None = None, throttle: Throttle | None = None,
              connect: Connector = tcp_connect, host_health: HostHealth | None = None,
              oauth2: Brokers | None = None) -> Runtime:
        """Everything a session needs that depends on the config (certificates are loaded
        here). Raises TLSConfigError. Fresh metrics, drain event, throttle, host health and
        OAuth2 brokers (access token caches) unless given."""
        server_tls = {lst.name: ServerTLS(lst) for lst in config.listeners if lst.tls != "none"}
        metrics = metrics if metrics is not None else Metrics()
        return cls(config, metrics,
                   UpstreamTLS(tls_settings(config)), server_tls,
                   drain if drain is not None else Drain(),
                   throttle if throttle is not None else Throttle(config.auth_throttle,
                                                                  trio.current_time),
                   connect, Lookups(config, metrics=metrics) if config.lookups else None,
                   host_health if host_health is not None else HostHealth(),
                   oauth2 if oauth2 is not None else Brokers(metrics),
                   warm_pools=WarmPools.of(config, metrics),
                   early_targets=early_targets(config))


@lru_cache(maxsize=4096)   # asked at every greeting; parsing the address costs more than it
def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class LogFields(TypedDict):
    """What every log line of a session names (never a password; the user per `logging.user`)."""

    listener: str
    client: str
    user: str


@dataclass(eq=False)  # hashed by identity: the listener keeps a set of open sessions
class Session:
    """One client connection from accept to close, and the facts its log line reports."""

    runtime: Runtime
    listener: Listener
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    tls: bool = False
    started: float = field(default_factory=time.monotonic)
    user: str | None = None
    upstream: str | None = None
    login_attempts: int = 0           # logins tried on this connection (Auth-Login-Attempt)
    commands: int = 0
    close_reason: Close = Close.CLIENT_CLOSED
    bytes_from_client: int = 0        # final counts, set when the session ends
    bytes_to_client: int = 0
    conn: Conn | None = None          # the client connection while the session runs
    # set by the listener around the handler, so that an operator can end it (admin kick)
    scope: trio.CancelScope | None = None
    # how to end it while the relay engine runs it without a task (relay/engine_accept.py)
    engine_kick: Callable[[], None] | None = None
    kicked: bool = False
    early: EarlyConnection | None = None   # connect_early: the upstream connect begun at accept
    upstream_early: bool = False           # the upstream connection is that one

    def kick(self) -> None:
        """End this session now (`mailproxy kick`): the listener sends BYE / -ERR and closes."""
        self.kicked = True
        self.close_reason = Close.KICKED
        if self.scope is not None:
            self.scope.cancel()
        elif self.engine_kick is not None:
            self.engine_kick()

    @property
    def bytes_in(self) -> int:
        """Bytes received from the client so far."""
        return self.conn.bytes_in if self.conn is not None else self.bytes_from_client

    @property
    def bytes_out(self) -> int:
        """Bytes sent to the client so far."""
        return self.conn.bytes_out if self.conn is not None else self.bytes_to_client

    @property
    def protocol(self) -> str:
        return self.listener.protocol

    @property
    def client_is_loopback(self) -> bool:
        return _is_loopback(self.client_ip)

    @property
    def plaintext_auth_allowed(self) -> bool:
        """RFC 3501 6.2.3 / RFC 2595: no cleartext passwords over an unencrypted link, unless
        the operator allows it (default: only for loopback clients)."""
        if self.tls:
            return True
        if self.listener.require_tls:  # tls: starttls + require_tls: never before STARTTLS
            return False
        allowed = self.listener.allow_plaintext_auth
        return self.client_is_loopback if allowed is None else allowed

    def log_fields(self) -> LogFields:
        return {
            "listener": self.listener.name,
            "client": f"{self.client_ip}:{self.client_port}",
            "user": log_user(self.runtime.config.logging, self.user),
        }

    def end(self, reason: Close) -> None:
        """Note why the session ends; a configured limit is counted (limit_hits) and logged."""
        self.close_reason = reason
        if reason.limit is not None:
            self.limit_hit(reason.limit)

    def limit_hit(self, name: str) -> None:
        """A configured limit was enforced (`name` is one of metrics.LIMITS)."""
        self.runtime.metrics.limit_hits.labels(name).inc()
        logs.event("limit_hit", **self.log_fields(), limit=name)

    def auth_blocked(self, user: str) -> bool:
        """Auth-failure throttling said no: count it and log it."""
        if not self.runtime.throttle.blocked(self.client_ip, user):
            return False
        self.runtime.metrics.limit_hits.labels("auth_throttle").inc()
        logs.event("auth", **self.log_fields(), result="throttled")
        return True

    async def auth_failure_delay(self) -> None:
        """A failed login: record it and wait the growing delay before replying."""
        await trio.sleep(self.runtime.throttle.failure(self.client_ip, self.user))

    def log_end(self) -> None:
        if not logs.enabled():
            return
        logs.event(
            "session_end",
            **self.log_fields(),
            upstream=self.upstream or "-",
            tls=self.tls,
            duration=round(time.monotonic() - self.started, 3),
            bytes_in=self.bytes_from_client,
            bytes_out=self.bytes_to_client,
            commands=self.commands,
            reason=self.close_reason.value,
        )


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class ByteCounter:
    """Bytes relayed in one direction, added to the Prometheus counter in batches (every
    FLUSH_BYTES and when the session ends), so the relay's hot path is an integer add."""

    FLUSH_BYTES = 4 * 1024 * 1024

    __slots__ = ("counter", "pending")

    def __init__(self, counter: _Counter):
        self.counter = counter
        self.pending = 0

    def add(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.counter.inc(self.pending)
            self.pending = 0


class CommandMeter:
    """Counts completed commands of one session (metrics by command and status, duration
    histogram, and the audit line when the listener has `audit: true`). Label children are
    cached process-wide (on Metrics, per protocol: every session shares them, so a session
    neither builds its own cache nor asks prometheus_client for a child), and a completion on
    the relay's hot path costs two dict hits and a tally (proxy/command_tally.py: counted per
    thread, added to prometheus_client at each scrape). The audit line names the command and
    its result, never its arguments."""

    def __init__(self, session: Session):
        self.session = session
        self.protocol = session.protocol
        self.metrics = session.runtime.metrics
        self.audit = session.listener.audit
        self._count, self._duration = self.metrics.command_children.setdefault(
            self.protocol, ({}, {}))

    def children(self, name: str, status: bytes) -> tuple[Any, Any]:
        """The counter child of (`name`, `status`) and the duration histogram child of `name`."""
        counter = self._count.get((name, status))
        if counter is None:
            counter = self._count[(name, status)] = self.metrics.commands.labels(
                self.protocol, name, status.decode("ascii", "replace"))
        histogram = self._duration.get(name)
        if histogram is None:   # IDLE lasts minutes by design: its own histogram
            histogram = self._duration[name] = (
                self.metrics.idle_duration.labels(self.protocol) if name == "IDLE"
                else self.metrics.command_duration.labels(self.protocol, name))
        return counter, histogram

    def completed(self, name: str, status: bytes, started: float) -> None:
        """`name` is already a bounded label (metrics.command_label)."""
        counter, histogram = self.children(name, status)
        elapsed = time.monotonic() - started
        self.metrics.command_tally.completed(counter, histogram, elapsed)   # added at scrape
        if self.audit:
            logs.event("command", **self.session.log_fields(), command=name,
                       status=status.decode("ascii", "replace"), duration=round(elapsed, 6))
