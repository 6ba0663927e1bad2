"""Stored analysis of an older version is derived again, not served (issue 17): the cache blob
(ENVELOPE, BODYSTRUCTURE, the search texts) and the SORT/THREAD fields record of a message
stored before proxy/gateway/header_block.py, which changed how header fields are read (a
header past the value bound, a folded field, a line without a colon: as Dovecot reads them).
Such records were written by CACHE_VERSION 2, TEXT_VERSION 5 and RECORD_VERSION 1; the test
stores records of those versions with stale contents and checks what a new session is told."""

from __future__ import annotations

import json

import trio

from proxy.gateway import analysis, mime, sortkeys

from .conftest import inbox_metas, message, select_stored

STALE_SUBJECTS = {1: "zz stale", 2: "aa stale"}   # the reverse of the real order


def _stale_blob(blob: bytes, subject: str) -> bytes:
    data = json.loads(blob)
    data.update({"v": 2, "tv": 5, "envelope": f'(NIL "{subject}" NIL NIL NIL NIL NIL NIL NIL NIL)',
                 "th": f"SUBJECT: {subject.upper()}", "tb": "STALE BODY"})
    return json.dumps(data).encode()


def _stale_record(subject: str) -> bytes:
    return json.dumps([1, subject.upper(), False, "", "", "", "", "", None, None, []]).encode()


async def test_analysis_stored_by_an_older_version_is_derived_again(gateway):
    gateway.deliver(message(1, subject="alpha"))
    gateway.deliver(message(2, subject="beta"))

    def first_session() -> None:
        client = gateway.imaplib()
        select_stored(client, 2)
        assert client.sort("(SUBJECT)", "UTF-8", "ALL")[1] == [b"1 2"]   # records written
        client.logout()

    await trio.to_thread.run_sync(first_session)
    store = gateway.service.store
    metas = await inbox_metas(gateway)
    blobs = await store.caches(metas)
    assert all(blob is not None for blob in blobs)
    await store.set_caches([(meta, _stale_blob(blob, STALE_SUBJECTS[meta.uid]))
                            for meta, blob in zip(metas, blobs, strict=True) if blob is not None])
    await store.set_sort_fields([(meta, _stale_record(STALE_SUBJECTS[meta.uid])) for meta in metas])
    await gateway.restart()   # nothing left in the process's caches

    def second_session() -> tuple[list, list, list, list]:
        client = gateway.imaplib()
        client.select("INBOX", readonly=True)
        envelopes = client.fetch("1:*", "(ENVELOPE)")[1]
        stale = client.search(None, "TEXT", "stale")[1]
        found = client.search(None, "TEXT", "beta")[1]
        order = client.sort("(SUBJECT)", "UTF-8", "ALL")[1]
        client.logout()
        return envelopes, stale, found, order

    envelopes, stale, found, order = await trio.to_thread.run_sync(second_session)
    assert [b'"%s"' % subject in envelope and b"stale" not in envelope
            for subject, envelope in zip((b"alpha", b"beta"), envelopes, strict=True)] == [True] * 2
    assert stale == [b""] and found == [b"2"]
    assert order == [b"1 2"]
    # and written back in the current versions
    store = gateway.service.store   # the restarted service's
    data = [json.loads(blob or b"{}") for blob in await store.caches(metas)]
    assert [(d["v"], d["tv"]) for d in data] == [(mime.CACHE_VERSION, analysis.TEXT_VERSION)] * 2
    records = [sortkeys.decode(r) for r in await store.sort_fields(metas)]
    assert [r.subject if r else None for r in records] == ["ALPHA", "BETA"]


def _newer_blob(blob: bytes) -> bytes:
    data = json.loads(blob)
    data.update({"v": mime.CACHE_VERSION + 1, "envelope": "a format this version cannot read"})
    return json.dumps(data).encode()


NEWER_RECORD = json.dumps([sortkeys.RECORD_VERSION + 1, "a format this version cannot read"]).encode()


async def test_analysis_stored_by_a_newer_version_is_used_in_memory_not_overwritten(gateway):
    """A rolling upgrade on one PostgreSQL store runs an older and a newer process side by
    side: the older one must not rewrite the newer one's analyses (each would then redo the
    other's in turn, on every load). It analyses the body in memory and leaves the row."""
    gateway.deliver(message(1, subject="beta"))
    gateway.deliver(message(2, subject="alpha"))

    def first_session() -> None:
        client = gateway.imaplib()
        select_stored(client, 2)
        assert client.sort("(SUBJECT)", "UTF-8", "ALL")[1] == [b"2 1"]   # records written
        client.logout()

    await trio.to_thread.run_sync(first_session)
    store = gateway.service.store
    metas = await inbox_metas(gateway)
    blobs = await store.caches(metas)
    newer = [_newer_blob(blob) for blob in blobs if blob is not None]
    assert len(newer) == 2
    await store.set_caches(list(zip(metas, newer, strict=True)))
    await store.set_sort_fields([(meta, NEWER_RECORD) for meta in metas])
    await gateway.restart()   # nothing left in the process's caches

    def second_session() -> tuple[list, list, list]:
        client = gateway.imaplib()
        client.select("INBOX", readonly=True)
        envelopes = client.fetch("1:*", "(ENVELOPE)")[1]
        found = client.search(None, "TEXT", "alpha")[1]
        order = client.sort("(SUBJECT)", "UTF-8", "ALL")[1]
        client.logout()
        return envelopes, found, order

    envelopes, found, order = await trio.to_thread.run_sync(second_session)
    assert [b'"%s"' % subject in envelope
            for subject, envelope in zip((b"beta", b"alpha"), envelopes, strict=True)] == [True] * 2
    assert found == [b"2"] and order == [b"2 1"]
    store = gateway.service.store   # the restarted service's
    assert await store.caches(metas) == newer              # left as the newer version wrote them
    assert await store.sort_fields(metas) == [NEWER_RECORD] * 2
