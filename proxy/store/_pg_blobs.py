"""Sealed blobs of `PostgresStore`'s bodies: the raw message, the cache blob and the sort fields
of each body row, read and replaced for many messages in one call.

Theory of operation: `PgBlobOps` is a mixin under `PgMessageOps` (`_pg_messages.py`) and over
`PgCalls` (`_pg_calls.py`), in the store's pairs: `_name(c, ...)` runs in a worker thread on a
pooled connection inside one transaction, `name(...)` is the async API that hands it to
`self._run`. Every blob is sealed by
`crypto.seal` with associated data "acct:{account}:{kind}:{body_id}" (kind: body, cache, sort),
so a record copied to another body or account does not open. Blobs are shared by the copies of a
message; replacing a cache or sort-fields blob is not a message change (no MODSEQ).
"""

from __future__ import annotations

from typing import Any, Sequence

import psycopg

from . import crypto
from ._pg_calls import PgCalls
from .base import MessageMeta, StoreError
from .crypto import KeyRing

__all__ = ["PgBlobOps"]

# sealed columns of `bodies` -> the record kind named in their associated data
_KINDS = {"data": "body", "cache": "cache", "sort_fields": "sort"}

Conn = psycopg.Connection[Any]


class PgBlobOps(PgCalls):
    """Blob operations of `PostgresStore` (see the module docstring)."""

    _ring: KeyRing | None

    def _insert_bodies(self, c: Conn, account_id: int,
                       items: Sequence[tuple[int, bytes, bytes | None, bytes | None]]) -> None:
        """(body id, body, cache blob, sort-fields blob) rows, sealed."""
        def seal(record: bytes | None, kind: str, body_id: int) -> bytes | None:
            return None if record is None else crypto.seal(
                record, f"acct:{account_id}:{kind}:{body_id}".encode(), self._ring)
        rows = [(body_id, account_id, len(body), seal(body, "body", body_id),
                 seal(cache, "cache", body_id), seal(sort_fields, "sort", body_id))
                for body_id, body, cache, sort_fields in items]
        c.cursor().executemany("INSERT INTO bodies(id, account_id, size, data, cache, sort_fields) "
                               "VALUES (%s, %s, %s, %s, %s, %s)", rows)

    def _blobs(self, c: Conn, messages: Sequence[MessageMeta], column: str) -> list[bytes | None]:
        kind = _KINDS[column]
        found: dict[int, bytes | None] = {}
        ids = sorted({m.body_id for m in messages})
        for body_id, account_id, record in c.execute(
                f"SELECT id, account_id, {column} FROM bodies WHERE id = ANY(%s)", (ids,)):
            what = f"message {messages[0].uid}" if len(messages) == 1 else f"{kind} {body_id}"
            found[body_id] = None if record is None else crypto.unseal(
                bytes(record), f"acct:{account_id}:{kind}:{body_id}".encode(), self._ring, what)
        return [found.get(m.body_id) for m in messages]

    async def body(self, message: MessageMeta) -> bytes:
        """The raw RFC 822 bytes, exactly as received."""
        [data] = await self._run(self._blobs, [message], "data")
        if data is None:
            raise StoreError(f"message {message.uid} no longer exists")
        return bytes(data)

    async def cache(self, message: MessageMeta) -> bytes | None:
        [data] = await self._run(self._blobs, [message], "cache")
        return None if data is None else bytes(data)

    async def bodies(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Raw bodies of many messages in one call, in order; None where the body is gone."""
        return list(await self._run(self._blobs, list(messages), "data"))

    async def caches(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Cache blobs of many messages in one call, in order; None when absent (or gone)."""
        return list(await self._run(self._blobs, list(messages), "cache"))

    def _set_blobs(self, c: Conn, items: Sequence[tuple[MessageMeta, bytes]],
                   must_exist: bool, column: str = "cache") -> None:
        kind = _KINDS[column]
        owners = dict(c.execute("SELECT id, account_id FROM bodies WHERE id = ANY(%s)",
                                (sorted({m.body_id for m, _ in items}),)).fetchall())
        rows = []
        for message, cache in items:
            account_id = owners.get(message.body_id)
            if account_id is None:
                if must_exist:
                    raise StoreError(f"message {message.uid} no longer exists")
                continue
            sealed = crypto.seal(cache, f"acct:{account_id}:{kind}:{message.body_id}".encode(),
                                 self._ring)
            rows.append((sealed, message.body_id))
        c.cursor().executemany(f"UPDATE bodies SET {column} = %s WHERE id = %s", rows)

    async def set_cache(self, message: MessageMeta, cache: bytes) -> None:
        """Replace the opaque cache blob (shared by copies). Not a message change: no MODSEQ."""
        await self._run(self._set_blobs, [(message, cache)], True)

    async def set_caches(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None:
        """`set_cache` for many messages in one transaction; bodies that are gone are skipped."""
        if items:
            await self._run(self._set_blobs, list(items), False)

    async def sort_fields(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Sort-fields blobs of many messages in one call, in order; None when absent (or gone)."""
        return list(await self._run(self._blobs, list(messages), "sort_fields", read=True))

    async def set_sort_fields(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None:
        """Keep sort-fields blobs (shared by copies; no MODSEQ); bodies that are gone are skipped."""
        if items:
            await self._run(self._set_blobs, list(items), False, "sort_fields")
