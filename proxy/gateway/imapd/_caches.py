"""In-memory caches over the store, all filled in batches (one store call for many messages).

Theory of operation: a stored body's cache blob (`store.set_cache`) is the JSON of
`analyze_for_store(raw)`: `mime.analyze()` (ENVELOPE, BODY, BODYSTRUCTURE, virtual size, part
table) plus "th"/"tb", the decoded, case-folded header and body text that SEARCH TEXT/BODY
match against (RFC 3501 6.4.4: case-insensitive substring). It is computed once per body: at
APPEND, at POP3 ingest, or lazily here for bodies stored without one (then saved with
`set_caches`). Bodies are shared by copies, so every cache is keyed by body id.

* `BodyCache`: recently read raw bodies within a byte budget (LRU).
* `SortFieldCache` (`MimeCache.sort_fields`): SORT/THREAD fields per body (LRU by size).
* `AnswerCache` (`MimeCache.answers`): SORT orders and THREAD answers by (program, mailbox,
  the selected messages' numbers and UIDs), LRU by size: webmail sorts the same mailbox on
  every page.
* `MimeCache`: parsed `mime.MimeInfo` per body and the search texts per body (LRUs by size:
  each LRU here weighs what its values hold in memory, `_info_weight` and the like).
  `infos()` and `texts()` answer a whole chunk of messages with at most one `store.caches()`
  call, plus one `store.bodies()` call for bodies never analysed.

A `None` in a batch result means the body is gone (expunged by another session, RFC 2180 4.1).
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from typing import Sequence

import trio

from ...store import MessageMeta
from .. import mime
from ..analysis import analyze_for_store, judge
from ..sortkeys import SortFields, decode, encode, extract, extract_record, written_by_newer
from ..workers import Workers

ANALYZE_IN_THREAD = 256 * 1024      # bodies (or batches) this big are analysed off the trio thread
SORT_FIELD_BYTES = 64 * 1024 * 1024   # cached messages' sort fields, all accounts (`_fields_weight`)
MIME_INFO_BYTES = 128 * 1024 * 1024   # cached parsed analyses, all accounts (`_info_weight`)
TEXT_BYTES = 64 * 1024 * 1024   # cached search texts, all accounts
SORT_FIELD_CHUNK = 256         # sort-field records decoded (or headers parsed) per slice
SORT_RECORD_CHUNK = 2048       # messages per store call while reading sort-field records
SORT_LOOKUP_CHUNK = 2048       # cached sort fields looked up per slice
ANSWERS_BYTES = 16 * 1024 * 1024   # cached SORT/THREAD answers and their keys, all accounts
PREVIEW_ENTRIES = 50_000       # cached PREVIEW texts, all accounts (at most 200 characters each)


async def analyze(raw: bytes, limits: mime.MimeLimits, workers: Workers) -> tuple[bytes, bytes]:
    """A new body's cache blob and sort-fields record (in a `workers.commands` thread when it
    is big)."""
    if len(raw) > ANALYZE_IN_THREAD:
        return await workers.command(_analyze, raw, limits)
    return _analyze(raw, limits)


async def _off_loop_if_big(workers: Workers, work, size: int):
    """`work()`, in a worker thread when it handles more than ANALYZE_IN_THREAD bytes: JSON
    of a big cache blob (a 10 MB header, the bound) is a C call that holds the event loop."""
    return await workers.command(work) if size > ANALYZE_IN_THREAD else work()


def _analyze(raw: bytes, limits: mime.MimeLimits) -> tuple[bytes, bytes]:
    return analyze_for_store(raw, limits), extract_record(raw, limits.max_header_bytes)


# Weights of cached values: what they hold in memory, as tracemalloc counts it (1 to 4 bytes a
# character, tests/gateway/test_cache_memory.py), not how many they are. Hostile mail makes
# big ones from small messages: a 40 KB message/rfc822 part whose From is commas has a 2.6 MB
# BODYSTRUCTURE and BODY (10,000 records of its ENVELOPE in each), a header of 1.6 MB a 7 MB
# SortFields (its subject and 100,000 References): counted by number, 100,000 of them were
# gigabytes, from mail anyone can send.
_PART_BYTES = 336    # a row of the part table: a list, its ints and its children's list
_INFO_BYTES = 400    # the MimeInfo object and its LRU slot
_FIELDS_BYTES = 320  # the SortFields object, its float and tuple, and its LRU slot


def _info_weight(info: mime.MimeInfo) -> int:
    parts, stack = 0, [info.parts]
    while stack:
        row = stack.pop()
        parts += 1
        stack.extend(row[4])
    return (sys.getsizeof(info.envelope) + sys.getsizeof(info.bodystructure)
            + sys.getsizeof(info.body) + parts * _PART_BYTES + _INFO_BYTES)


def _fields_weight(fields: SortFields) -> int:
    texts = (fields.subject, fields.from_, fields.to, fields.cc, fields.display_from,
             fields.display_to, fields.message_id or "")
    return (sum(sys.getsizeof(t) for t in texts) + sum(sys.getsizeof(r) + 8 for r in fields.references)
            + _FIELDS_BYTES)


class _Lru:
    def __init__(self, budget: int, weigh=lambda value: 1):
        self.budget, self.used, self.weigh = budget, 0, weigh
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        weight = self.weigh(value)
        if weight > self.budget // 8 or key in self.items:
            return
        self.items[key] = value
        self.used += weight
        while self.used > self.budget:
            self.used -= self.weigh(self.items.popitem(last=False)[1])


class BodyCache:
    """Recently read raw bodies by body id, within `budget` bytes (LRU)."""

    def __init__(self, budget: int = 64 * 1024 * 1024):
        self._lru = _Lru(budget, len)

    async def get(self, store, meta: MessageMeta) -> bytes:
        """One body; raises StoreError when it is gone."""
        raw = self._lru.get(meta.body_id)
        if raw is None:
            raw = await store.body(meta)
            self._lru.put(meta.body_id, raw)
        return raw

    async def get_many(self, store, metas: Sequence[MessageMeta]) -> list[bytes | None]:
        out = [self._lru.get(m.body_id) for m in metas]
        missing = [i for i, raw in enumerate(out) if raw is None]
        if missing:
            loaded = await store.bodies([metas[i] for i in missing])
            for i, raw in zip(missing, loaded, strict=True):
                out[i] = raw
                if raw is not None:
                    self._lru.put(metas[i].body_id, raw)
        return out


class SortFieldCache:
    """SORT/THREAD fields (sortkeys.py) by body id, LRU within `budget` bytes. Misses are read from the
    bodies' stored sort-fields records (one store call per `SORT_RECORD_CHUNK` messages, decoded
    in slices of `SORT_FIELD_CHUNK`); a body without a record (stored before there were any) has
    its header parsed in a worker thread and its record written back, so that happens once."""

    def __init__(self, bodies: BodyCache, budget: int = SORT_FIELD_BYTES,
                 max_header_bytes: int = mime.DEFAULT_LIMITS.max_header_bytes,
                 workers: Workers | None = None):
        self.bodies, self.max_header_bytes = bodies, max_header_bytes
        self.workers = workers if workers is not None else Workers.build()
        self._lru = _Lru(budget, _fields_weight)

    async def fields(self, store, metas: Sequence[MessageMeta]) -> list[SortFields | None]:
        out: list[SortFields | None] = []
        for start in range(0, len(metas), SORT_LOOKUP_CHUNK):   # hits too: 10,000 take ~15 ms
            if start:
                await trio.lowlevel.checkpoint()
            out += [self._lru.get(m.body_id) for m in metas[start:start + SORT_LOOKUP_CHUNK]]
        missing = [i for i, f in enumerate(out) if f is None]
        newer: set[int] = set()
        for start in range(0, len(missing), SORT_RECORD_CHUNK):
            part = missing[start:start + SORT_RECORD_CHUNK]
            records = await store.sort_fields([metas[i] for i in part])
            unknown = []
            for n in range(0, len(part), SORT_FIELD_CHUNK):
                if n:
                    await trio.lowlevel.checkpoint()
                for i, record in zip(part[n:n + SORT_FIELD_CHUNK], records[n:n + SORT_FIELD_CHUNK],
                                     strict=True):
                    value = decode(record)
                    if value is None:
                        unknown.append(i)
                        if written_by_newer(record):   # parsed here, its record kept
                            newer.add(i)
                    else:
                        out[i] = value
                        self._lru.put(metas[i].body_id, value)
            await self._parse(store, metas, unknown, out, newer)
        return out

    async def _parse(self, store, metas: Sequence[MessageMeta], todo: list[int],
                     out: list[SortFields | None], newer: set[int]) -> None:
        """Fill `out[i]` for `i` in `todo` from the headers; keep their records in the store,
        but for those in `newer` (a newer version's record, which stays)."""
        for start in range(0, len(todo), SORT_FIELD_CHUNK):
            part = todo[start:start + SORT_FIELD_CHUNK]
            raws = await self.bodies.get_many(store, [metas[i] for i in part])
            present = [(i, raw) for i, raw in zip(part, raws, strict=True) if raw is not None]
            found = await self.workers.command(_extract_all, [raw for _, raw in present],
                                               self.max_header_bytes)
            for (i, _), (value, _) in zip(present, found, strict=True):
                out[i] = value
                self._lru.put(metas[i].body_id, value)
            await store.set_sort_fields([(metas[i], record) for (i, _), (_, record)
                                         in zip(present, found, strict=True) if i not in newer])


class AnswerCache:
    """SORT orders and THREAD answers by what they depend on (`_sort._selection`), LRU within
    `budget` bytes as weighed by the caller (the answer and the key's tuples)."""

    def __init__(self, budget: int = ANSWERS_BYTES):
        self._lru = _Lru(budget, lambda entry: entry[0])

    def get(self, key: tuple):
        entry = self._lru.get(key)
        return None if entry is None else entry[1]

    def put(self, key: tuple, answer, weight: int) -> None:
        self._lru.put(key, (weight, answer))


def _extract_all(raws: list[bytes], max_header_bytes: int) -> list[tuple[SortFields, bytes]]:
    """Each header's sort fields and their stored record."""
    out = []
    for raw in raws:
        fields = extract(raw, max_header_bytes)
        out.append((fields, encode(fields)))
    return out


_GONE = (None, None)   # `MimeCache._load` found no body


class MimeCache:
    """See the module docstring."""

    def __init__(self, bodies: BodyCache, info_budget: int = MIME_INFO_BYTES,
                 text_budget: int = TEXT_BYTES, sort_budget: int = SORT_FIELD_BYTES,
                 limits: mime.MimeLimits = mime.DEFAULT_LIMITS, workers: Workers | None = None):
        self.bodies, self.limits = bodies, limits
        # the gateway's worker threads (workers.py), shared by every account like this cache
        self.workers = workers if workers is not None else Workers.build()
        # process-wide like this cache (body ids are unique in the store): its bound holds
        # however many accounts sort
        self.sort_fields = SortFieldCache(bodies, sort_budget, limits.max_header_bytes,
                                          workers=self.workers)
        self.answers = AnswerCache()
        self.previews = _Lru(PREVIEW_ENTRIES)   # FETCH PREVIEW text by body id (_preview.py)
        self._infos = _Lru(info_budget, _info_weight)
        self._texts = _Lru(text_budget, lambda t: sys.getsizeof(t[0]) + sys.getsizeof(t[1]) + 64)

    async def info(self, store, meta: MessageMeta) -> mime.MimeInfo:
        """One message's MIME info; raises StoreError when the body is gone."""
        info = (await self.infos(store, [meta]))[0]
        if info is None:
            from ...store import StoreError
            raise StoreError(f"message {meta.uid} no longer exists")
        return info

    def peek(self, meta: MessageMeta) -> mime.MimeInfo | None:
        """The MIME info if it is in memory (no store call)."""
        return self._infos.get(meta.body_id)

    async def infos(self, store, metas: Sequence[MessageMeta]) -> list[mime.MimeInfo | None]:
        out = [self._infos.get(m.body_id) for m in metas]
        missing = [metas[i] for i, info in enumerate(out) if info is None]
        if missing:
            found = await self._load(store, missing)
            out = [info or found.get(m.body_id, _GONE)[0] for info, m in zip(out, metas, strict=True)]
        return out

    async def texts(self, store, metas: Sequence[MessageMeta]) -> list[tuple[str, str] | None]:
        """(header text, body text), decoded and case-folded, per message."""
        out = [self._texts.get(m.body_id) for m in metas]
        missing = [metas[i] for i, text in enumerate(out) if text is None]
        if missing:
            found = await self._load(store, missing)
            out = [text or found.get(m.body_id, _GONE)[1] for text, m in zip(out, metas, strict=True)]
        return out

    async def _load(self, store, metas: Sequence[MessageMeta]
                    ) -> dict[int, tuple[mime.MimeInfo, tuple[str, str]]]:
        """Fill both LRUs for `metas` from their cache blobs (analysing bodies that have none);
        returns the infos and texts by body id, bodies gone left out (the LRUs may not keep
        them: too big, or pushed out by the rest of the batch)."""
        unique = list({m.body_id: m for m in metas}.values())
        blobs = await store.caches(unique)
        found: dict[int, tuple[mime.MimeInfo, tuple[str, str]]] = {}
        stale, newer = [], set()
        decoded = await _off_loop_if_big(self.workers, lambda: [judge(b, self.limits) for b in blobs],
                                         sum(len(b or b"") for b in blobs))
        for meta, (data, replace) in zip(unique, decoded, strict=True):
            if data is None:
                stale.append(meta)
                if not replace:   # a newer version's (analysis.judge): analysed here, kept there
                    newer.add(meta.body_id)
            else:
                self._remember(meta, data, found)
        if stale:
            raws = await self.bodies.get_many(store, stale)
            present = [(m, r) for m, r in zip(stale, raws, strict=True) if r is not None]
            analysed = await _off_loop_if_big(
                self.workers,
                lambda: [(blob := analyze_for_store(r, self.limits), json.loads(blob))
                         for _, r in present], sum(len(r) for _, r in present))
            kept = [(m, b) for (m, _), (b, _) in zip(present, analysed, strict=True)
                    if m.body_id not in newer]
            if kept:
                await store.set_caches(kept)
            for (meta, _), (_, data) in zip(present, analysed, strict=True):
                self._remember(meta, data, found)
        return found

    def _remember(self, meta: MessageMeta, data: dict, found: dict) -> None:
        info, text = mime.from_cache(data), (data["th"], data["tb"])
        found[meta.body_id] = (info, text)
        self._infos.put(meta.body_id, info)
        self._texts.put(meta.body_id, text)
