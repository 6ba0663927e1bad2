"""Every Prometheus metric of mailproxy, declared here and nowhere else.

`Metrics(registry)` creates the metric objects on the registry it is given (a fresh
`CollectorRegistry` when None, never prometheus_client's global one, so tests and several
instances never share counts). Code that records something takes the `Metrics` instance it was
handed and calls e.g. `metrics.commands.labels(protocol, command_label(protocol, name),
status_label(protocol, status)).inc()`.

Names are `mailproxy_<noun>_<unit>`: counters end in `_total`, durations are `_seconds` histograms.
Label values are bounded: never a user, mailbox or raw client text. Values that come from the wire
go through the clamping helpers (`command_label`, `status_label`, `mechanism_label`), which map
anything unknown to "other"; they and every label's known values live in `metric_labels.py`
and are exported from here too. Listener and upstream names come from the config file and are
bounded by it; `init_listener` / `init_upstream` pre-create their series at 0.
"""

from __future__ import annotations

import functools
import platform
from typing import Any, Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from . import __version__
from .command_tally import CommandTally
from .metric_labels import (
    AUTH_MECHANISMS,
    AUTH_RESULTS,
    DIRECTIONS,
    IMAP_COMMANDS,
    IMAP_STATUSES,
    LIMITS,
    LOOKUP_CACHE,
    LOOKUP_KINDS,
    LOOKUP_RESULTS,
    OAUTH2_REFRESH_RESULTS,
    OTHER,
    POP3_COMMANDS,
    POP3_STATUSES,
    PROTOCOLS,
    STARTTLS_RESULTS,
    STARTTLS_SIDES,
    TLS_RESULTS,
    command_label,
    mechanism_label,
    status_label,
)

__all__ = [
    "Metrics", "WorkerMetrics", "PROTOCOLS", "IMAP_COMMANDS", "POP3_COMMANDS", "IMAP_STATUSES",
    "POP3_STATUSES", "AUTH_MECHANISMS", "AUTH_RESULTS", "TLS_RESULTS", "STARTTLS_RESULTS",
    "DIRECTIONS", "LIMITS", "OAUTH2_REFRESH_RESULTS", "UPSTREAM_ANOMALIES", "OTHER", "command_label",
    "status_label", "mechanism_label",
]

MAX_CHILDREN = 4096   # label children remembered by Metrics.child()

COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1, 2.5, 5, 10, 30, 60, 300, 1800)
# IMAP sessions commonly last hours (IDLE clients reconnect every 29 min, some stay all day).
SESSION_BUCKETS = (0.1, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# `le` values of mailproxy_gateway_accounts_sync_age (seconds since the last successful sync).
SYNC_AGE_BUCKETS = ("60", "300", "900", "3600", "21600", "86400", "+Inf")
# `kind` values of mailproxy_gateway_upstream_anomalies_total (gateway/fetcher.py)
UPSTREAM_ANOMALIES = ("bad_uidl", "too_big", "retr_refused", "passed_over")
SYNC_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def _synced_within(last_success: Callable[[], list[float | None]], clock: Callable[[], float],
                   bound: float) -> float:
    """How many accounts had a successful sync within `bound` seconds (all of them for +Inf)."""
    times = last_success()
    if bound == float("inf"):
        return float(len(times))
    now = clock()
    return float(sum(1 for t in times if t is not None and now - t <= bound))


class Metrics:
    """The metric objects of one process, on one registry.

    Attributes are the metric objects (see the module docstring for the naming rules); label
    names are listed beside each. `registry` is what `/metrics` exposes.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        # No `*_created` series: they double the series count and nothing here reads them.
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # label children of `commands` and the duration histograms by protocol, filled by
        # session.context.CommandMeter and shared by every session (no labels() per session);
        # what it counts goes through `command_tally`, registered first: flushed at each collect
        self.command_children: dict[str, tuple[dict[Any, Any], dict[Any, Any]]] = {}
        self.command_tally = CommandTally()
        r.register(self.command_tally)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}   # see child()
        ProcessCollector(registry=r)      # process_resident_memory_bytes, _open_fds, _cpu_seconds
        PlatformCollector(registry=r)     # python_info

        # --- connections and sessions; tls is the listener's mode: none|starttls|implicit
        self.connections = Counter(
            "mailproxy_connections_total", "Client connections accepted.",
            ["listener", "protocol", "tls"], registry=r)
        self.connections_active = Gauge(
            "mailproxy_connections_active", "Client connections currently open.",
            ["listener", "protocol", "tls"], registry=r)
        self.session_duration = Histogram(
            "mailproxy_session_duration_seconds", "Client session length, accept to close.",
            ["listener", "protocol"], buckets=SESSION_BUCKETS, registry=r)
        self.relay_engine_sessions = Gauge(
            "mailproxy_relay_engine_sessions",
            "Relay sessions run by the epoll relay engine (relay.engine: epoll).", registry=r)
        self.relay_engine_accepted = Counter(
            "mailproxy_relay_engine_accepted_total",
            "Connections the relay engine's thread accepted itself (relay.engine_accept).",
            ["listener"], registry=r)
        self.relay_spliced_bytes = Counter(
            "mailproxy_relay_spliced_bytes_total",
            "IMAP literal payload bytes the relay engine moved from an upstream to a client with "
            "os.splice (relay.splice_min_literal), never read into Python.", registry=r)

        # --- TLS
        self.tls_handshakes = Counter(
            "mailproxy_tls_handshakes_total", "Client-side TLS handshakes (implicit or STARTTLS).",
            ["listener", "result"], registry=r)
        self.starttls = Counter(
            "mailproxy_starttls_total",
            "STARTTLS/STLS upgrades; result=injection counts plaintext sent after the command.",
            ["side", "protocol", "result"], registry=r)

        # --- authentication and commands
        self.auth_attempts = Counter(
            "mailproxy_auth_attempts_total", "Client authentication attempts by outcome.",
            ["protocol", "mechanism", "result"], registry=r)
        self.commands = Counter(
            "mailproxy_commands_total",
            "Client commands by completion status (none: the session ended before the reply).",
            ["protocol", "command", "status"], registry=r)
        self.command_duration = Histogram(
            "mailproxy_command_duration_seconds",
            "Time from a command to its completion reply (IDLE excluded: see idle_duration).",
            ["protocol", "command"], buckets=COMMAND_BUCKETS, registry=r)
        self.idle_duration = Histogram(
            "mailproxy_idle_duration_seconds",
            "Length of IDLE commands (RFC 2177), which last minutes by design.",
            ["protocol"], buckets=SESSION_BUCKETS, registry=r)

        # --- upstreams
        self.upstream_connect_duration = Histogram(
            "mailproxy_upstream_connect_duration_seconds",
            "Time to connect to an upstream, TLS included, until its greeting.",
            ["upstream", "protocol"], buckets=CONNECT_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "mailproxy_upstream_errors_total", "Failed upstream connections or sessions, by reason.",
            ["upstream", "protocol", "reason"], registry=r)
        self.upstream_warm = Counter(
            "mailproxy_upstream_warm_pool_total", "Warm upstream connections (warm_pool:), by "
            "event: hit, miss, stale, expired, lost (dropped in a login, retried), opened, failed.",
            ["upstream", "protocol", "event"], registry=r)
        self.upstream_early = Counter(
            "mailproxy_upstream_connect_early_total", "Upstream connections started at the "
            "client's accept (connect_early:), by result: used, stale (too old or failed: a "
            "fresh connect made), unused (no login), lost (dropped in a login, retried).",
            ["upstream", "protocol", "result"], registry=r)
        self.upstream_reuse = Counter(
            "mailproxy_upstream_reuse_total", "Reuse of authenticated upstream IMAP connections "
            "(reuse:), by outcome: hit, miss (a login), parked, unparkable (a session's end), "
            "expired, idle, closed, full, superseded, emptied (dropped from the pool).",
            ["upstream", "outcome"], registry=r)
        self.upstream_up = Gauge(
            "mailproxy_upstream_up", "1 if the last health check of the upstream service passed.",
            ["upstream", "protocol"], registry=r)

        # --- directory lookups (proxy/routing)
        self.lookups = Counter(
            "mailproxy_lookups_total",
            "Lookups by kind (http|ldap), result (route|refuse|pass|unavailable) and cache "
            "(hit|miss).", ["kind", "result", "cache"], registry=r)
        self.lookup_duration = Histogram(
            "mailproxy_lookup_duration_seconds", "Time a directory took to answer (cache misses).",
            ["kind"], buckets=CONNECT_BUCKETS, registry=r)

        # --- traffic, errors, limits
        self.bytes = Counter(
            "mailproxy_bytes_total", "Bytes relayed.", ["direction", "protocol"], registry=r)
        self.protocol_errors = Counter(
            "mailproxy_protocol_errors_total", "Protocol violations by a peer, by kind.",
            ["protocol", "kind"], registry=r)
        self.limit_hits = Counter(
            "mailproxy_limit_hits_total", "Times a configured limit was enforced.",
            ["limit"], registry=r)

        # --- OAuth2 brokering (proxy/oauth2): refresh_token grants at token endpoints
        self.oauth2_refreshes = Counter(
            "mailproxy_oauth_token_refreshes_total",
            "Access token refreshes (refused: the refresh token was revoked or expired; "
            "unavailable: the endpoint was down or refused the client).",
            ["result"], registry=r)
        for result in OAUTH2_REFRESH_RESULTS:
            self.oauth2_refreshes.labels(result)

        # --- gateway (POP3 ingest, store, IMAP sessions over the store)
        self.gateway_syncs = Counter(
            "mailproxy_gateway_syncs_total", "POP3 syncs of gateway accounts, by result.",
            ["result"], registry=r)
        self.gateway_sync_duration = Histogram(
            "mailproxy_gateway_sync_duration_seconds", "Duration of one POP3 sync.",
            buckets=SYNC_BUCKETS, registry=r)
        self.gateway_ingested_messages = Counter(
            "mailproxy_gateway_ingested_messages_total", "Messages ingested from POP3.", registry=r)
        self.gateway_ingested_bytes = Counter(
            "mailproxy_gateway_ingested_bytes_total", "Bytes of messages ingested from POP3.",
            registry=r)
        self.gateway_upstream_deletes = Counter(
            "mailproxy_gateway_upstream_deletes_total",
            "DELE commands sent upstream by the retention policy.", registry=r)
        self.gateway_over_quota = Counter(
            "mailproxy_gateway_over_quota_messages_total",
            "New POP3 messages left upstream by a sync because the account is over "
            "gateway.quota (counted again by every sync until space is freed).", registry=r)
        self.gateway_ingest_errors = Counter(
            "mailproxy_gateway_ingest_errors_total", "Failed syncs, by reason.", ["reason"],
            registry=r)
        self.gateway_upstream_anomalies = Counter(
            "mailproxy_gateway_upstream_anomalies_total",
            "Messages a POP3 upstream served wrongly, by kind: bad_uidl (a UIDL breaking RFC "
            "1939 7 or repeated: keyed by digest instead), too_big (over "
            "gateway.limits.max_message_bytes), retr_refused (-ERR to RETR), passed_over (too "
            "big or timed out in two syncs: not asked for an hour); the last three are left "
            "upstream (counted again by every sync that meets them).", ["kind"], registry=r)
        for kind in UPSTREAM_ANOMALIES:
            self.gateway_upstream_anomalies.labels(kind)
        self.gateway_store_size = Gauge(
            "mailproxy_gateway_store_bytes", "Size of the gateway store on disk.", registry=r)
        self.gateway_sessions = Gauge(
            "mailproxy_gateway_sessions", "Open gateway IMAP sessions (logged in).", registry=r)
        self.gateway_login_syncs = Counter(
            "mailproxy_gateway_login_syncs_total",
            "Gateway logins by whether the account's sync they wait for finished within "
            "gateway.login_sync_wait (synced) or the login was answered before (pending: the "
            "client sees what is stored so far, the rest as EXISTS once the sync ends).",
            ["result"], registry=r)
        for result in ("synced", "pending"):
            self.gateway_login_syncs.labels(result)
        self.gateway_idle_sessions = Gauge(
            "mailproxy_gateway_idle_sessions", "Gateway IMAP sessions in IDLE.", registry=r)
        self.gateway_accounts = Gauge(
            "mailproxy_gateway_accounts",
            "Gateway accounts this process syncs (with sessions, or background polled).",
            registry=r)
        self.gateway_sync_age = Gauge(
            "mailproxy_gateway_accounts_sync_age",
            "Accounts of this process whose last successful sync is at most `le` seconds old "
            "(cumulative; le=+Inf counts every account, synced or not).",
            ["le"], registry=r)
        self.gateway_propagation_seconds = Histogram(
            "mailproxy_gateway_propagation_seconds",
            "Time from a mailbox change to its untagged response in another session.",
            buckets=COMMAND_BUCKETS, registry=r)

        # --- certificates (per listener certificate, set at start and on reload); process
        self.certificate_expiry = Gauge(
            "mailproxy_certificate_expiry_timestamp_seconds",
            "When a listener's certificate expires (Unix time).",
            ["listener", "certificate"], registry=r)
        self.build_info = Gauge(
            "mailproxy_build_info", "Always 1; labels carry the version.",
            ["version", "python"], registry=r)
        # health.Health.publish(metrics) makes this read Health.draining at each scrape
        self.draining = Gauge(
            "mailproxy_draining", "1 while the process drains before shutdown.", registry=r)
        self._initialise()

    def _initialise(self) -> None:
        """Create the label combinations known in advance, so their series exist at 0."""
        self.build_info.labels(__version__, platform.python_version()).set(1)
        for protocol in PROTOCOLS:
            for mechanism in AUTH_MECHANISMS[protocol]:
                for result in AUTH_RESULTS:
                    self.auth_attempts.labels(protocol, mechanism, result)
            for direction in DIRECTIONS:
                self.bytes.labels(direction, protocol)
            for side in STARTTLS_SIDES:
                for result in STARTTLS_RESULTS:
                    self.starttls.labels(side, protocol, result)
        for limit in LIMITS:
            self.limit_hits.labels(limit)
        for kind in LOOKUP_KINDS:
            self.lookup_duration.labels(kind)
            for result in LOOKUP_RESULTS:
                for cache in LOOKUP_CACHE:
                    self.lookups.labels(kind, result, cache)
        for protocol in PROTOCOLS:
            self.idle_duration.labels(protocol)
        for le in SYNC_AGE_BUCKETS:
            self.gateway_sync_age.labels(le)

    def init_listener(self, name: str, protocol: str, tls: str) -> None:
        """Pre-create the series of one configured listener (call once per listener)."""
        self.connections.labels(name, protocol, tls)
        self.connections_active.labels(name, protocol, tls)
        self.session_duration.labels(name, protocol)
        if tls != "none":
            for result in TLS_RESULTS:
                self.tls_handshakes.labels(name, result)

    def publish_sync_ages(self, last_success: Callable[[], list[float | None]],
                          clock: Callable[[], float]) -> None:
        """Make mailproxy_gateway_accounts[_sync_age] read, at each scrape, every account's last
        successful sync time (Unix time; None: never synced) from `last_success()`."""
        self.gateway_accounts.set_function(lambda: float(len(last_success())))
        for le in SYNC_AGE_BUCKETS:
            self.gateway_sync_age.labels(le).set_function(
                functools.partial(_synced_within, last_success, clock, float(le)))

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)` remembered (at most MAX_CHILDREN: upstream names may come
        from lookups): what each login records skips prometheus_client's checks and lookup."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            found = self._children[key] = metric.labels(*labels)
        return found

    def init_upstream(self, name: str, protocol: str, reasons: Iterable[str]) -> None:
        """Pre-create the series of one configured upstream service; `reasons` are the
        failure labels (proxy.session.failures.Failure.labels())."""
        self.upstream_connect_duration.labels(name, protocol)
        for reason in sorted(reasons):
            self.upstream_errors.labels(name, protocol, reason)


class WorkerMetrics:
    """The supervisor's own series with `workers: N` (proxy/workers/), on its registry; the
    workers' counts are merged beside them at each scrape (proxy/workers/aggregate.py)."""

    def __init__(self, registry: CollectorRegistry):
        self.workers = Gauge(
            "mailproxy_workers", "Worker processes configured (`workers`).", registry=registry)
        self.workers_ready = Gauge(
            "mailproxy_workers_ready", "Worker processes running and accepting connections.",
            registry=registry)
        self.worker_restarts = Counter(
            "mailproxy_worker_restarts_total",
            "Worker processes started again after one exited unexpectedly.", registry=registry)
