"""The gateway's process-wide caches of analyses (proxy/gateway/imapd/_caches.py) are bounded by
the memory their values hold, as tracemalloc counts it, not by how many there are: hostile
mail makes big values from small messages (a message/rfc822 part of 2 KB whose From is commas
is a 0.5 MB BODYSTRUCTURE and BODY; a header of 0.5 MB a SortFields as big), and 100,000 of
them were gigabytes, from mail anyone can send. Filled on a real store (both of them) with
more such messages than fit, each cache holds no more memory than its bound."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from proxy.gateway.imapd._caches import BodyCache, MimeCache

from .test_store import inbox_of

BUDGET = 8 * 1024 * 1024
MESSAGES = 40


def nested_commas(n: int) -> bytes:
    """A message whose message/rfc822 part has a From of 2,000 empty addresses: 2,000 records
    (44 bytes each) in its ENVELOPE, written in BODYSTRUCTURE and BODY, three times each (From,
    Sender, Reply-To)."""
    return (b"From: a@example.org\r\nSubject: %d\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: " % n + b"," * 2000
            + b"\r\n\r\nbody\r\n--b--\r\n")


def long_header(n: int) -> bytes:
    """A message whose Subject is 200 KB and whose References list 5,000 IDs."""
    refs = b" ".join(b"<r%dx%d@example.org>" % (n, k) for k in range(5000))
    return (b"From: a@example.org\r\nSubject: %d " % n + b"word " * 40000
            + b"\r\nReferences: " + refs + b"\r\n\r\nbody\r\n")


def held_by(items: dict) -> int:
    """The memory freed by emptying `items` (an LRU's dict): what its values hold."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    items.clear()
    gc.collect()
    return before - tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("shape", ["infos", "sort_fields"])
async def test_an_analysis_cache_holds_at_most_its_bound_in_memory(store, shape):
    _, inbox = await inbox_of(store)
    make = nested_commas if shape == "infos" else long_header
    for n in range(MESSAGES):
        await store.append(inbox.id, make(n))
    metas = await store.messages(inbox.id)
    cache = MimeCache(BodyCache(budget=1024), info_budget=BUDGET, sort_budget=BUDGET)
    tracemalloc.start()
    try:
        if shape == "infos":
            infos = await cache.infos(store, metas)
            assert [info is not None and len(info.bodystructure) for info in infos] == [264_215] * MESSAGES
            items = cache._infos.items
            del infos   # (kept here, the values would outlive emptying the LRU: held_by saw ~2 KB)
        else:
            fields = await cache.sort_fields.fields(store, metas)
            assert all(f is not None and len(f.references) == 5000 for f in fields)
            items = cache.sort_fields._lru.items
            del fields
        assert 4 <= len(items) < MESSAGES   # it keeps some: the bound is what stops it
        held = held_by(items)
    finally:
        tracemalloc.stop()
    assert held <= BUDGET, f"{held} bytes held for a bound of {BUDGET}"
