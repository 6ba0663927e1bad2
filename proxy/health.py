"""Liveness, readiness and the upstream health checker.

`Health` is plain state written by its owners (the app sets `listeners_bound` and `draining`, the
checker sets `upstream_ok`) and read by `/healthz` and `/readyz`. The process is ready when its
listeners are bound, it is not draining and at least one upstream answered its last check.

`check_upstreams` opens a connection to every service (imap, pop3) of every upstream each round,
reads the greeting and closes. A service is up when the greeting is `* OK` (IMAP) or `+OK` (POP3);
`* PREAUTH`, `* BYE`, anything else, a timeout or a refused connection is down. An upstream is ok
when any of its services is up. A pool (`hosts:`) is checked host by host: each result goes to
`Health.hosts` (proxy/routing/pool.py), so logins skip a host the checker saw down, and a host
marked down after a failed connect is re-probed each round and taken back once it answers; the
service is up when any host is. With `workers:` the checker runs in the supervisor, and its
`publish` hands each round's host results to every worker (their own `Health.hosts`) before the
transitions are logged, so a logged transition is in force in every process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Awaitable, Callable

import trio

from . import logs
from .net.conn import Conn
from .routing.pool import HostHealth
from .session.failures import Failure
from .session.upstream import (
    ContextFactory,
    UpstreamError,
    built_context,
    deadline,
    open_upstream,
)

if TYPE_CHECKING:
    from .config import Config, ServicePort, Upstream
from .metrics import Metrics

__all__ = ["Health", "HostCheck", "check_upstreams", "check_round", "check_service"]

CHECK_TIMEOUT = 5.0       # connect, TLS handshake and greeting, per service
MAX_GREETING = 1024       # bytes read while looking for the end of the greeting line


@dataclass(frozen=True)
class HostCheck:
    """One pool host as a round saw it: `failure` is None when it greeted; a host seen down
    stays down for `valid_for` seconds (until the next check is due)."""

    upstream: str
    host: str
    protocol: str
    failure: str | None
    valid_for: float

    @property
    def up(self) -> bool:
        return self.failure is None

    def record(self, hosts: HostHealth) -> None:
        hosts.record(self.upstream, self.host, self.protocol, self.up, self.valid_for)


Publish = Callable[[list[HostCheck]], Awaitable[None]]


@dataclass
class Health:
    """Process health as seen by `/healthz` and `/readyz`."""

    listeners_bound: bool = False
    draining: bool = False
    upstream_ok: dict[str, bool] = field(default_factory=dict)
    # (upstream, protocol) -> last check result; written by check_round only
    service_up: dict[tuple[str, str], bool] = field(default_factory=dict)
    # pool hosts: marked down by a failed connect or check, up again after a good check;
    # shared with the sessions (Runtime.host_health) across reloads
    hosts: HostHealth = field(default_factory=HostHealth)

    @property
    def alive(self) -> bool:
        return True

    @property
    def not_ready_reason(self) -> str | None:
        """None when ready, else a short reason for `/readyz`."""
        reason = self.local_not_ready_reason
        if reason is None and not any(self.upstream_ok.values()):
            return "no upstream reachable"
        return reason

    @property
    def local_not_ready_reason(self) -> str | None:
        """For `/readyz/local`: this process's own state only. With every upstream down a pod
        still answers its clients (NO [UNAVAILABLE], -ERR [SYS/TEMP]), which beats the TCP
        resets they would get from a Service with no ready pod (the Helm chart's readiness)."""
        if self.draining:
            return "draining"
        if not self.listeners_bound:
            return "listeners not bound"
        return None

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    def publish(self, metrics: Metrics) -> None:
        """Make `mailproxy_draining` read `self.draining` at every scrape."""
        metrics.draining.set_function(lambda: 1.0 if self.draining else 0.0)


async def check_upstreams(config: Config | Callable[[], Config], health: Health,
                          metrics: Metrics, *, publish: Publish | None = None,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Check every upstream service forever, every `min(health_check_interval)` seconds.

    Reports `started()` after the first round, so `health.upstream_ok` is filled by then.
    `publish`: see check_round.

    Resource handling: each check opens and closes its own connection within CHECK_TIMEOUT.
    Error handling: every network or TLS error marks the service down; nothing is raised.
    """
    current = config if callable(config) else (lambda: config)  # a getter follows reloads
    while True:
        config_now = current()
        interval = min(upstream.health_check_interval for upstream in config_now.upstreams.values())
        deadline = trio.current_time() + interval
        await check_round(config_now, health, metrics, publish)
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        await trio.sleep_until(deadline)


async def check_round(config: Config, health: Health, metrics: Metrics,
                      publish: Publish | None = None) -> None:
    """Check every upstream service once, concurrently, then publish the results.

    Sets `health.service_up`, `health.upstream_ok`, `health.hosts` (pool hosts) and
    `mailproxy_upstream_up`, awaits `publish(pool host results)` when given (the supervisor
    sends them to its workers), then logs `upstream_health` for each host and service whose
    state changed (or was not known before).
    """
    results: dict[tuple[str, str], str | None] = {}
    hosts: list[HostCheck] = []

    async def check(name: str, protocol: str, port: ServicePort) -> None:
        upstream = config.upstreams[name]
        if len(upstream.pool) == 1:
            results[name, protocol] = await check_service(upstream, protocol, port)
        else:
            results[name, protocol] = await _check_pool(name, upstream, protocol, port, hosts)

    async with trio.open_nursery() as nursery:
        for name, upstream in config.upstreams.items():
            for protocol, port in (("imap", upstream.imap), ("pop3", upstream.pop3)):
                if port is not None:
                    nursery.start_soon(check, name, protocol, port)

    changed = [c for c in hosts if health.hosts.is_up(c.upstream, c.host, c.protocol) != c.up]
    for host_check in hosts:
        host_check.record(health.hosts)
    if publish is not None and hosts:
        await publish(hosts)
    for c in changed:
        _log_transition(c.upstream, c.protocol, c.up, c.failure, c.host)

    service_up = {key: failure is None for key, failure in results.items()}
    for (name, protocol), up in service_up.items():
        metrics.upstream_up.labels(name, protocol).set(1 if up else 0)
        if health.service_up.get((name, protocol)) != up:
            _log_transition(name, protocol, up, results[name, protocol])
    health.service_up = service_up
    health.upstream_ok = {name: any(up for (n, _), up in service_up.items() if n == name)
                          for name in config.upstreams}


async def _check_pool(name: str, upstream: Upstream, protocol: str, port: ServicePort,
                      checks: list[HostCheck]) -> str | None:
    """Check each host of a pool concurrently, appending each result to `checks`; None when
    any host is up, else the first host's failure."""
    failures: dict[str, str | None] = {}
    context = await built_context(upstream, port)

    async def check_host(host: str) -> None:
        failures[host] = await check_service(replace(upstream, host=host, hosts=()), protocol,
                                             port, context)

    async with trio.open_nursery() as nursery:
        for host in upstream.pool:
            nursery.start_soon(check_host, host)
    checks.extend(HostCheck(name, host, protocol, failures[host],
                            upstream.health_check_interval + CHECK_TIMEOUT)
                  for host in upstream.pool)
    return None if None in failures.values() else failures[upstream.pool[0]]


def _log_transition(name: str, protocol: str, up: bool, failure: str | None,
                    host: str | None = None) -> None:
    where = {} if host is None else {"host": host}
    if up:
        logs.event("upstream_health", logging.INFO, upstream=name, **where, protocol=protocol,
                   up=True)
    else:
        logs.event("upstream_health", logging.WARNING, upstream=name, **where,
                   protocol=protocol, up=False, reason=failure)


async def check_service(upstream: Upstream, protocol: str, port: ServicePort,
                        context: ContextFactory | None = None) -> str | None:
    """Connect to one upstream service (proxy.session.upstream, as sessions do) and read its
    greeting. `context`: the TLS context when the caller built it already.

    Returns:
        None when the service greeted with `* OK` / `+OK`, else a short, log-safe reason.
    """
    conn: Conn | None = None
    try:
        if context is None:
            context = await built_context(upstream, port)
        with deadline(CHECK_TIMEOUT, "check"):
            conn = await open_upstream(upstream, protocol, context)
            greeting = await _read_line(conn)
    except UpstreamError as exc:
        if exc.failure is Failure.TIMEOUT:
            return "timeout"
        return f"{exc.failure.label}: {logs.sanitize(exc.detail, 80)}"
    finally:
        if conn is not None:
            await trio.aclose_forcefully(conn.stream)  # no close_notify wait: nothing to flush
    if greeting is None:
        return "closed before greeting"
    if _greeting_ok(protocol, greeting):
        return None
    return f"greeting: {logs.sanitize(greeting.rstrip(), 80)}"


def _greeting_ok(protocol: str, line: bytes) -> bool:
    if protocol == "imap":
        # RFC 9051 7.1: status keywords are case-insensitive; PREAUTH and BYE are not OK here.
        return line[:4].upper() == b"* OK" and line[4:5] in (b" ", b"\r", b"\n", b"")
    return line.startswith(b"+OK")  # RFC 1939 3: "+OK" in upper case


async def _read_line(conn: Conn) -> bytes | None:
    """The first line (at most MAX_GREETING bytes), or None if the peer sent nothing at all."""
    data = b""
    while b"\n" not in data and len(data) < MAX_GREETING:
        chunk = await conn.receive()
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0] or None
