"""FETCH (RFC 3501 6.4.5, 7.4.2): attribute parsing, the MIME/body caches, rendering.

Theory of operation: ENVELOPE, BODY, BODYSTRUCTURE and the virtual RFC822.SIZE come from the
MIME analysis that `mime.analyze()` computes once per stored body (at APPEND, or lazily for
ingested messages, then saved with `store.set_cache`). `MimeCache` keeps the parsed form per
body id in memory (bodies are shared by copies, so the id is the right key); `BodyCache` keeps
recently read raw bodies within a byte budget, which makes "headers first, then the body" and
repeated SEARCH TEXT cheap. Body sections are cut by `sections.fetch_section` from the raw body
with the cached part table.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass

import trio

from .. import mime
from ..sections import SectionError, fetch_section
from ...store import MessageMeta
from ._args import Reply, format_date_time, is_atom, flag_list

ANALYZE_IN_THREAD = 512 * 1024      # bigger bodies are parsed off the trio thread
_BODY_ITEM = re.compile(rb"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK)\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?$",
                        re.IGNORECASE)
_MACROS = {
    b"ALL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"),
    b"FAST": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"),
    b"FULL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"),
}
_SIMPLE = {b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY", b"BODYSTRUCTURE",
           b"UID", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"}
_SETS_SEEN = {b"RFC822", b"RFC822.TEXT"}   # RFC 3501 6.4.5: these set \Seen, RFC822.HEADER does not


@dataclass(frozen=True, slots=True)
class Item:
    name: bytes                 # upper-case item, or b"BODY[]" for sections
    section: bytes | None = None
    partial: tuple[int, int] | None = None
    peek: bool = True

    @property
    def needs_body(self) -> bool:
        return self.section is not None or self.name in (b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT")

    @property
    def needs_mime(self) -> bool:
        return self.name in (b"ENVELOPE", b"BODY", b"BODYSTRUCTURE", b"RFC822.SIZE") or self.needs_body


def parse_items(arg: object, *, uid: bool) -> list[Item]:
    """The fetch-att list of a FETCH; UID FETCH always includes UID (RFC 3501 6.4.8)."""
    raw = arg if isinstance(arg, tuple) else (arg,)
    if not raw:
        raise Reply.bad("Empty FETCH item list")
    items: list[Item] = [Item(b"UID")] if uid else []
    for value in raw:
        if not is_atom(value):
            raise Reply.bad("Invalid FETCH item")
        word = bytes(value).upper()
        if word in _MACROS and len(raw) == 1:
            items += [Item(name) for name in _MACROS[word]]
        elif word in _SIMPLE:
            items.append(Item(word, peek=word not in _SETS_SEEN))
        elif (match := _BODY_ITEM.match(bytes(value))) is not None:
            kind, section, start, length = match.groups()
            if kind.upper().startswith(b"BINARY"):
                raise Reply.bad("BINARY is not supported")
            try:   # validate now: BAD before any response is sent
                fetch_section(b"\r\n", section)
            except SectionError as exc:
                raise Reply.bad(f"Invalid section: {exc}") from None
            partial = None
            if start is not None:
                partial = (int(start), int(length) if length is not None else 1 << 62)
            items.append(Item(b"BODY[]", section, partial, peek=kind.upper() == b"BODY.PEEK"))
        else:
            raise Reply.bad(f"Unknown FETCH item {bytes(value)[:40].decode('ascii', 'replace')}")
    seen: set[Item] = set()
    return [i for i in items if not (i in seen or seen.add(i))]


class BodyCache:
    """Recently read raw bodies by body id, within `budget` bytes (LRU)."""

    def __init__(self, budget: int = 64 * 1024 * 1024):
        self.budget, self.used = budget, 0
        self._lru: OrderedDict[int, bytes] = OrderedDict()

    async def get(self, store, meta: MessageMeta) -> bytes:
        raw = self._lru.get(meta.body_id)
        if raw is not None:
            self._lru.move_to_end(meta.body_id)
            return raw
        raw = await store.body(meta)
        if len(raw) <= self.budget // 8:
            self._lru[meta.body_id] = raw
            self.used += len(raw)
            while self.used > self.budget:
                self.used -= len(self._lru.popitem(last=False)[1])
        return raw


class MimeCache:
    """Parsed `mime.MimeInfo` by body id (LRU of `entries`), filled from the store's cache blob
    or, when a body has none (ingested before analysis), by analysing it once and saving it."""

    def __init__(self, bodies: BodyCache, entries: int = 100_000):
        self.bodies, self.entries = bodies, entries
        self._lru: OrderedDict[int, mime.MimeInfo] = OrderedDict()

    async def info(self, store, meta: MessageMeta) -> mime.MimeInfo:
        info = self._lru.get(meta.body_id)
        if info is not None:
            self._lru.move_to_end(meta.body_id)
            return info
        blob = await store.cache(meta)
        try:
            info = mime.from_cache(blob) if blob else None
        except (ValueError, KeyError):   # an older cache version: analyse again
            info = None
        if info is None:
            raw = await self.bodies.get(store, meta)
            data = await analyze(raw)
            await store.set_cache(meta, json.dumps(data).encode())
            info = mime.from_cache(data)
        self._lru[meta.body_id] = info
        if len(self._lru) > self.entries:
            self._lru.popitem(last=False)
        return info


async def analyze(raw: bytes) -> dict:
    if len(raw) > ANALYZE_IN_THREAD:
        return await trio.to_thread.run_sync(mime.analyze, raw)
    return mime.analyze(raw)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


async def render(session, seq: int, meta: MessageMeta, items: list[Item], flags) -> bytes:
    """`seq FETCH (...)` for one message (without "* " and CRLF). Raises StoreError when the
    body is gone (expunged by another session, not yet announced here)."""
    backend = session.backend
    info = await backend.mime.info(session.store, meta) if any(i.needs_mime for i in items) else None
    raw = await backend.mime.bodies.get(session.store, meta) if any(
        i.needs_body for i in items) else None
    parts = []
    for item in items:
        name = item.name
        if name == b"UID":
            parts.append(b"UID %d" % meta.uid)
        elif name == b"FLAGS":
            parts.append(b"FLAGS " + flag_list(flags))
        elif name == b"INTERNALDATE":
            parts.append(b"INTERNALDATE " + format_date_time(meta.internaldate))
        elif name == b"RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % info.size)
        elif name == b"ENVELOPE":
            parts.append(b"ENVELOPE " + info.envelope)
        elif name == b"BODY":
            parts.append(b"BODY " + info.body)
        elif name == b"BODYSTRUCTURE":
            parts.append(b"BODYSTRUCTURE " + info.bodystructure)
        elif item.section is None:   # RFC822, RFC822.HEADER, RFC822.TEXT
            parts.append(name + b" " + _literal(fetch_section(raw, name, parts=info.parts)))
        else:
            try:
                data = fetch_section(raw, item.section, item.partial, parts=info.parts)
            except SectionError as exc:
                raise Reply.bad(f"Invalid section: {exc}") from None
            origin = b"<%d>" % item.partial[0] if item.partial else b""
            parts.append(b"BODY[" + item.section + b"]" + origin + b" " + _literal(data))
    return b"%d FETCH (" % seq + b" ".join(parts) + b")"
