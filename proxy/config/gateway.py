"""`gateway:`: the POP3->IMAP gateway's store, polling, retention, limits and quota."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import PlainValidator, StrictBool, StrictInt, StrictStr

from .values import STRICT, Duration, Problem, SecretValue, Size, load_secret, parse_duration


def _load_store(value: Any) -> str:
    """`gateway.store`: a path or URL, or `{file:}`/`{env:}` holding one (a PostgreSQL URL from a
    Kubernetes Secret)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return load_secret(value).value.decode()
    raise ValueError("expected a file path, a postgresql:// URL, or {file: PATH} / {env: NAME}")


StoreLocation = Annotated[str, PlainValidator(_load_store)]
# store_replica_lease must be at least this many store_ack_interval (proxy/store/_pg_bodies.py)
MIN_LEASE_ACKS = 5


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds on what one message or one command may cost the gateway (issue 14)."""

    __pydantic_config__ = STRICT
    mime_max_depth: StrictInt = 100       # deeper multipart/message parts are opaque leaves
    mime_max_parts: StrictInt = 10000     # past this many parts, boundaries are not recognised
    mime_max_header_bytes: Size = 10 * 1024 * 1024   # header values read per part (Dovecot's bound)
    envelope_max_addresses: StrictInt = 10000   # address records per ENVELOPE field (not Dovecot's)
    command_budget: Duration = 60.0       # a command running longer answers NO [LIMIT]
    sequence_set_ranges: StrictInt = 100000   # distinct ranges in one sequence set, else BAD
    search_updates: StrictInt = 10        # live SEARCH/SORT RETURN (UPDATE) per session (RFC 5267)
    command_threads: StrictInt = 4        # worker threads for commands' CPU work (gateway/workers.py)
    ingest_threads: StrictInt = 2         # worker threads for new mail's analysis and listings
    # hostile or broken POP3 upstreams (gateway/pop3_client.py): a reply's time and size
    pop3_reply_timeout: Duration = 120.0  # a POP3 reply (status line, listing, RETR) this late fails
    pop3_min_rate: Size = 64 * 1024       # ... plus one second per this many bytes of a long reply
    max_message_bytes: Size = 100 * 1024 * 1024   # a bigger message is left upstream, not stored
    max_listing_bytes: Size = 64 * 1024 * 1024    # a longer UIDL/LIST listing fails the sync
    sync_budget: Duration = 15 * 60.0     # a sync fetching longer ends; the next sync goes on


@dataclass(frozen=True, slots=True)
class GatewayQuota:
    """Per-account quota (RFC 9208, issue 17); none set: no quota root, no limit."""

    __pydantic_config__ = STRICT
    storage: Size | None = None           # bytes of all messages, copies included
    messages: StrictInt | None = None     # messages in all mailboxes

    @property
    def enabled(self) -> bool:
        return self.storage is not None or self.messages is not None


@dataclass(frozen=True, slots=True)
class Gateway:
    __pydantic_config__ = STRICT
    store: StoreLocation = "mailproxy-gateway.db"  # SQLite file, or postgresql://user@host/db?...
    store_password: SecretValue | None = None  # PostgreSQL password ({file:}/{env:}), not in the URL
    store_pool_size: StrictInt = 10            # PostgreSQL connections per process
    store_pool_per_account: StrictInt | None = None   # of those, one account's at once (half)
    store_ack_interval: Duration = 2.0         # PostgreSQL: replica acks (horizon, pins, lease)
    store_replica_lease: Duration = 60.0       # PostgreSQL: a replica silent this long is dead
    store_query_timeout: Duration = 30.0       # PostgreSQL: a store call unanswered this long fails
    poll_interval: Duration = 60.0
    login_sync_wait: Duration = 10.0        # a login waits this long for the account's sync
    upstream_retention: StrictStr = "keep"  # keep | delete-after-fetch | a duration such as 30d
    key_file: Path | None = None
    background_poll: StrictBool = False
    auth_cache_ttl: Duration = 300.0
    change_log_keep: StrictInt = 10000    # MODSEQs of change history kept per mailbox (QRESYNC)
    user_case: Literal["lower", "domain", "preserve"] = "lower"   # proxy/gateway/users.py
    url_hosts: tuple[StrictStr, ...] = ()   # this server's names in absolute imap:// URLs (CATENATE)
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    quota: GatewayQuota = field(default_factory=GatewayQuota)

    @property
    def retention_seconds(self) -> float | None:
        """None for `keep`, 0 for `delete-after-fetch`, else the delay before DELE."""
        if self.upstream_retention == "keep":
            return None
        if self.upstream_retention == "delete-after-fetch":
            return 0.0
        return parse_duration(self.upstream_retention)


def check_gateway(gateway: Gateway | None) -> list[Problem]:
    errors: list[Problem] = []
    if gateway is None:
        return errors
    if gateway.background_poll and gateway.key_file is None:
        errors.append((("gateway", "background_poll"),
                       "background_poll needs gateway.key_file (credentials are stored only "
                       "encrypted); set key_file (mailproxy gen-key writes one) or remove "
                       "background_poll"))
    try:
        _ = gateway.retention_seconds
    except ValueError:
        errors.append((("gateway", "upstream_retention"),
                       "expected keep, delete-after-fetch or a duration such as 30d"))
    limits = gateway.limits
    if not 1 <= limits.mime_max_depth <= 200:   # the part tree is walked recursively
        errors.append((("gateway", "limits", "mime_max_depth"), "expected 1 to 200"))
    if limits.mime_max_parts < 1:
        errors.append((("gateway", "limits", "mime_max_parts"), "expected at least 1"))
    if limits.mime_max_header_bytes < 1024:
        errors.append((("gateway", "limits", "mime_max_header_bytes"), "expected at least 1KB"))
    if limits.envelope_max_addresses < 1:
        errors.append((("gateway", "limits", "envelope_max_addresses"), "expected at least 1"))
    if limits.search_updates < 1:   # RFC 5267 4.3.1: at least one updating context per client
        errors.append((("gateway", "limits", "search_updates"), "expected at least 1"))
    for key, threads in (("command_threads", limits.command_threads),
                         ("ingest_threads", limits.ingest_threads)):
        if not 1 <= threads <= 64:
            errors.append((("gateway", "limits", key), "expected 1 to 64 threads"))
    if not 1 <= limits.pop3_reply_timeout <= 3600:
        errors.append((("gateway", "limits", "pop3_reply_timeout"), "expected 1s to 1h"))
    if limits.pop3_min_rate < 1024:
        errors.append((("gateway", "limits", "pop3_min_rate"), "expected at least 1KB"))
    if limits.max_message_bytes < 1024:
        errors.append((("gateway", "limits", "max_message_bytes"), "expected at least 1KB"))
    if limits.max_listing_bytes < 1024:
        errors.append((("gateway", "limits", "max_listing_bytes"), "expected at least 1KB"))
    if not 1 <= limits.sync_budget <= 24 * 3600:
        errors.append((("gateway", "limits", "sync_budget"), "expected 1s to 24h"))
    for key, value in (("storage", gateway.quota.storage), ("messages", gateway.quota.messages)):
        if value is not None and value < 1:
            errors.append((("gateway", "quota", key), "expected at least 1"))
    if not 1 <= gateway.store_pool_size <= 1000:
        errors.append((("gateway", "store_pool_size"), "expected 1 to 1000 connections"))
    elif gateway.store_pool_per_account is not None \
            and not 1 <= gateway.store_pool_per_account <= gateway.store_pool_size:
        errors.append((("gateway", "store_pool_per_account"),
                       f"expected 1 to store_pool_size ({gateway.store_pool_size}) connections"))
    if not 0.01 <= gateway.store_ack_interval <= 60:
        errors.append((("gateway", "store_ack_interval"), "expected 10ms to 60s"))
    elif gateway.store_replica_lease < MIN_LEASE_ACKS * gateway.store_ack_interval:
        errors.append((("gateway", "store_replica_lease"),
                       f"expected at least {MIN_LEASE_ACKS} times store_ack_interval "
                       f"({MIN_LEASE_ACKS * gateway.store_ack_interval:g}s): a replica whose "
                       "acks are a little late would count as dead"))
    if not 0.1 <= gateway.store_query_timeout <= 3600:
        errors.append((("gateway", "store_query_timeout"), "expected 100ms to 1h"))
    if not 0 <= gateway.login_sync_wait <= 600:
        errors.append((("gateway", "login_sync_wait"), "expected 0s to 10m"))
    if gateway.store_password is not None and "://" not in gateway.store:
        errors.append((("gateway", "store_password"),
                       "only a postgresql:// store takes a password"))
    return errors
