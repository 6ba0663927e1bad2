"""The sealed records of `SqliteStore`: message bodies, their cache blobs and sort-fields
records (`base.py`), written, read in batches and collected.

Theory of operation: `BodyOps` is a mixin of `SqliteStore` (`sqlite.py`), the base of
`MessageOps` (`_sqlite_messages.py`), with the same pairs of methods (`_name` in the worker
thread, `name` the async API through `self._run`, or `self._quick` when the work is small:
at most `INLINE_ROWS` messages and `INLINE_BYTES` of bodies). Bodies are shared: COPY/MOVE copy
the message row, not the body, so a body is deleted only when no message refers to it any more
(`_collect_bodies`). Each record is sealed (`crypto.seal`) with associated data naming its
account, kind and body id (see `sqlite.py`). Lists of ids are queried `_CHUNK` host parameters
at a time (SQLite's limit).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar, TypeVarTuple

from . import crypto
from ._schema import transaction
from .base import MessageMeta, StoreError
from .crypto import KeyRing

__all__ = ["BodyOps", "INLINE_ROWS", "INLINE_BYTES", "chunks"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_CHUNK = 500   # host parameters per IN (...) list, well under SQLite's limit
INLINE_ROWS = 64            # a call on at most this many messages may be quick (see sqlite.py)
INLINE_BYTES = 64 * 1024    # ... and on at most this many bytes of bodies


def _small(messages: Sequence[MessageMeta]) -> bool:
    return len(messages) <= INLINE_ROWS and sum(m.size for m in messages) <= INLINE_BYTES


# sealed columns of `bodies` -> the record kind named in their associated data
_KINDS = {"data": "body", "cache": "cache", "sort_fields": "sort"}


def chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """`values` in slices of `_CHUNK` (host parameters of one IN (...) list)."""
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


class BodyOps:
    """Sealed records of `SqliteStore` (see the module docstring)."""

    _db: sqlite3.Connection
    _ring: KeyRing | None

    if TYPE_CHECKING:
        async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T: ...
        async def _quick(self, fn: Callable[[*Ts], T], *args: *Ts) -> T: ...

    def _insert_body(self, body_id: int, account_id: int, body: bytes, cache: bytes | None,
                     sort_fields: bytes | None = None) -> None:
        def seal(record: bytes | None, kind: str) -> bytes | None:
            return None if record is None else crypto.seal(
                record, f"acct:{account_id}:{kind}:{body_id}".encode(), self._ring)
        self._db.execute("INSERT INTO bodies(id, account_id, size, data, cache, sort_fields) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (body_id, account_id, len(body), seal(body, "body"), seal(cache, "cache"),
                          seal(sort_fields, "sort")))

    def _collect_bodies(self, body_ids: set[int]) -> None:
        self._db.executemany(
            "DELETE FROM bodies WHERE id = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages WHERE body_id = ?)", [(b, b) for b in body_ids])

    def _blob(self, message: MessageMeta, column: str) -> bytes | None:
        row = self._db.execute(f"SELECT account_id, {column} FROM bodies WHERE id = ?",
                               (message.body_id,)).fetchone()
        if row is None:
            raise StoreError(f"message {message.uid} no longer exists")
        account_id, record = row
        if record is None:
            return None
        return crypto.unseal(record, f"acct:{account_id}:{_KINDS[column]}:{message.body_id}".encode(),
                             self._ring, f"message {message.uid}")

    def _body(self, message: MessageMeta) -> bytes:
        body = self._blob(message, "data")
        if body is None:   # bodies.data is NOT NULL: only a damaged file gets here
            raise StoreError(f"message {message.uid} has no body")
        return body

    async def body(self, message: MessageMeta) -> bytes:
        """The raw RFC 822 bytes, exactly as received."""
        return await (self._quick if _small([message]) else self._run)(self._body, message)

    async def cache(self, message: MessageMeta) -> bytes | None:
        return await self._run(self._blob, message, "cache")

    def _set_cache(self, message: MessageMeta, cache: bytes) -> None:
        with transaction(self._db):
            row = self._db.execute("SELECT account_id FROM bodies WHERE id = ?",
                                   (message.body_id,)).fetchone()
            if row is None:
                raise StoreError(f"message {message.uid} no longer exists")
            sealed = crypto.seal(cache, f"acct:{row[0]}:cache:{message.body_id}".encode(), self._ring)
            self._db.execute("UPDATE bodies SET cache = ? WHERE id = ?", (sealed, message.body_id))

    async def set_cache(self, message: MessageMeta, cache: bytes) -> None:
        """Replace the opaque cache blob (shared by copies). Not a message change: no MODSEQ."""
        await self._run(self._set_cache, message, cache)

    def _collect(self, body_ids: Sequence[int]) -> None:
        with transaction(self._db):
            self._collect_bodies(set(body_ids))

    async def collect_bodies(self, body_ids: Sequence[int]) -> None:
        """Delete those of the bodies that no message refers to any more."""
        if body_ids:
            run = self._quick if len(body_ids) <= INLINE_ROWS else self._run
            await run(self._collect, list(body_ids))

    # ---- batched reads and cache writes (gateway fast paths; appended) ------------------------

    def _blobs(self, messages: Sequence[MessageMeta], column: str) -> list[bytes | None]:
        kind = _KINDS[column]
        found: dict[int, bytes | None] = {}
        ids = sorted({m.body_id for m in messages})
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            for body_id, account_id, record in self._db.execute(
                    f"SELECT id, account_id, {column} FROM bodies WHERE id IN ({marks})", chunk):
                found[body_id] = None if record is None else crypto.unseal(
                    record, f"acct:{account_id}:{kind}:{body_id}".encode(), self._ring,
                    f"{kind} {body_id}")
        return [found.get(m.body_id) for m in messages]

    async def bodies(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Raw bodies of many messages in one call, in order; None where the body is gone."""
        return await (self._quick if _small(messages) else self._run)(
            self._blobs, list(messages), "data")

    async def caches(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Cache blobs of many messages in one call, in order; None when absent (or gone)."""
        return await (self._quick if _small(messages) else self._run)(
            self._blobs, list(messages), "cache")

    def _set_blobs(self, items: Sequence[tuple[MessageMeta, bytes]], column: str) -> None:
        kind = _KINDS[column]
        with transaction(self._db):
            for message, record in items:
                row = self._db.execute("SELECT account_id FROM bodies WHERE id = ?",
                                       (message.body_id,)).fetchone()
                if row is not None:
                    sealed = crypto.seal(record, f"acct:{row[0]}:{kind}:{message.body_id}".encode(),
                                         self._ring)
                    self._db.execute(f"UPDATE bodies SET {column} = ? WHERE id = ?",
                                     (sealed, message.body_id))

    async def set_caches(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None:
        """`set_cache` for many messages in one transaction; bodies that are gone are skipped."""
        await self._run(self._set_blobs, list(items), "cache")

    async def sort_fields(self, messages: Sequence[MessageMeta]) -> list[bytes | None]:
        """Sort-fields blobs of many messages in one call, in order; None when absent (or gone)."""
        run = self._quick if len(messages) <= INLINE_ROWS else self._run
        return await run(self._blobs, list(messages), "sort_fields")

    async def set_sort_fields(self, items: Sequence[tuple[MessageMeta, bytes]]) -> None:
        """Keep sort-fields blobs (shared by copies; no MODSEQ); bodies that are gone are skipped."""
        if items:
            await self._run(self._set_blobs, list(items), "sort_fields")
