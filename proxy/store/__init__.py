"""The gateway's message store: the `Store` protocol, its SQLite implementation, encryption at rest.

`open_store(url_or_path, key_ring)` picks the implementation from `gateway.store`: a file path is
SQLite; a `postgresql://` URL is PostgreSQL (several replicas on one database).
"""

from __future__ import annotations

import os

from .base import (
    DEFAULT_MAILBOXES,
    HIERARCHY_DELIMITER,
    INBOX,
    Account,
    AccountSummary,
    AppendItem,
    Change,
    ChangeKind,
    ChangesPruned,
    FlagMode,
    FlagUpdate,
    IngestItem,
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    MessageMeta,
    Store,
    StoreError,
    StoreFailure,
    StoreFlagsResult,
    StoreUnavailable,
    Usage,
)
from .crypto import KeyRing, StoreKeyError
from .fairness import acting_for

__all__ = [
    "DEFAULT_MAILBOXES", "HIERARCHY_DELIMITER", "INBOX", "Account", "AccountSummary", "AppendItem",
    "Change", "ChangeKind",
    "ChangesPruned",
    "FlagMode", "FlagUpdate", "IngestItem", "KeyRing", "Mailbox", "MailboxExists", "MailboxNotFound",
    "MessageMeta", "Store", "StoreError", "StoreFailure", "StoreFlagsResult", "StoreKeyError",
    "StoreUnavailable", "Usage",
    "open_store", "is_postgres_url", "display_store",
    "load_key_ring", "acting_for",
]


def load_key_ring(path: str | os.PathLike[str] | None) -> KeyRing | None:
    """The key ring of `gateway.key_file`, or None when no key file is configured."""
    return None if path is None else KeyRing.from_file(path)


def is_postgres_url(url_or_path: str) -> bool:
    return url_or_path.startswith(("postgresql://", "postgres://"))


def display_store(url_or_path: str) -> str:
    """`gateway.store` as it may be shown (logs, errors): a URL without its password."""
    if is_postgres_url(url_or_path):
        from ._pg_schema import redact

        return redact(url_or_path)
    return url_or_path


async def open_store(url_or_path: str, key_ring: KeyRing | None = None, *,
                     password: str | None = None, pool_size: int | None = None,
                     ack_interval: float = 2.0, replica_lease: float = 60.0,
                     pool_per_account: int | None = None, query_timeout: float = 30.0) -> Store:
    """Open the store named by `gateway.store`. Raises StoreError/StoreKeyError on failure.

    `password`, `pool_size`, `ack_interval`, `replica_lease`, `pool_per_account` and
    `query_timeout` apply to PostgreSQL only (`gateway.store_password`, `gateway.store_pool_size`,
    `gateway.store_ack_interval`, `gateway.store_replica_lease`,
    `gateway.store_pool_per_account`, `gateway.store_query_timeout`); TLS and the rest are the
    URL's own parameters (`sslmode`, `sslrootcert`...).
    """
    if is_postgres_url(url_or_path):
        from ._pg_bodies import ReplicaTiming
        from .postgres import DEFAULT_POOL_SIZE, open_postgres

        return await open_postgres(url_or_path, key_ring, password=password,
                                   pool_size=pool_size or DEFAULT_POOL_SIZE,
                                   timing=ReplicaTiming(ack_interval, replica_lease),
                                   per_account=pool_per_account, query_timeout=query_timeout)
    if url_or_path.startswith("sqlite://"):
        url_or_path = url_or_path[len("sqlite://"):]
    from .sqlite import open_sqlite

    return await open_sqlite(url_or_path, key_ring)
