"""Changing `gateway.limits.envelope_max_addresses` redoes the stored analyses it changes, and
only those (proxy/gateway/analysis.py `judge`, mime.py `EnvelopeReach`): an ENVELOPE cut at
one bound is not served under another, in both directions, on both stores; an analysis whose
address fields are all below both bounds is kept as stored (the test marks it to see that)."""

from __future__ import annotations

import dataclasses
import json

import trio

from proxy.gateway import mime

from .conftest import GatewayHandle, inbox_metas, message, select_stored

MARK = "kept as stored"


def _many(n: int) -> bytes:
    """A message whose From lists `n` addresses."""
    senders = ", ".join(f"u{k}@example.org" for k in range(n))
    return message(1, subject="many").replace(b"From: Alice <alice@example.org>",
                                             b"From: " + senders.encode())


def _from_count(envelope: bytes) -> int:
    """Address records in an ENVELOPE's From (the test's addresses are u<k>@example.org)."""
    return envelope.split(b'"example.org"))', 1)[0].count(b'"example.org")') + 1


async def _envelopes(gateway: GatewayHandle) -> list[bytes]:
    def run() -> list[bytes]:
        client = gateway.imaplib()
        select_stored(client, 2)
        found = client.fetch("1:*", "(ENVELOPE)")[1]
        client.logout()
        return [item for item in found if isinstance(item, bytes)]
    return await trio.to_thread.run_sync(run)


async def _restart_with_bound(gateway: GatewayHandle, bound: int) -> None:
    config = gateway.config
    assert config.gateway is not None
    limits = dataclasses.replace(config.gateway.limits, envelope_max_addresses=bound)
    gateway.config = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway,
                                                                             limits=limits))
    await gateway.restart()   # nothing left in the process's caches


async def _blobs(gateway: GatewayHandle) -> tuple[list, list[dict]]:
    store = gateway.service.store
    metas = await inbox_metas(gateway)
    return metas, [json.loads(blob or b"{}") for blob in await store.caches(metas)]


async def _mark_the_small_one(gateway: GatewayHandle) -> None:
    """Put MARK into the stored subject of message 2 (one From address), which no bound here
    changes: it shows whether that analysis was redone."""
    metas, data = await _blobs(gateway)
    data[1]["envelope"] = data[1]["envelope"].replace('"message 2"', f'"{MARK}"')
    assert MARK in data[1]["envelope"]
    await gateway.service.store.set_caches([(metas[1], json.dumps(data[1]).encode())])


async def _check_bound(dovecot, tmp_path, nursery, gateway_store, first: int, then: int) -> None:
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store,
                            limits={"envelope_max_addresses": first})
    await gateway.start(nursery)
    try:
        gateway.deliver(_many(8))
        gateway.deliver(message(2))
        many, small = await _envelopes(gateway)
        assert _from_count(many) == min(8, first)
        await _mark_the_small_one(gateway)

        await _restart_with_bound(gateway, then)
        many, small = await _envelopes(gateway)
        assert _from_count(many) == min(8, then)   # redone under the new bound
        assert MARK.encode() in small                 # not redone: no bound changes it
        _, data = await _blobs(gateway)
        assert [d["v"] for d in data] == [mime.CACHE_VERSION] * 2
        assert _from_count(data[0]["envelope"].encode("latin-1")) == min(8, then)   # and stored
    finally:
        await gateway.stop()


async def test_a_raised_envelope_bound_redoes_the_cut_analysis(dovecot, tmp_path, nursery,
                                                              gateway_store):
    await _check_bound(dovecot, tmp_path, nursery, gateway_store, first=3, then=10)


async def test_a_lowered_envelope_bound_redoes_the_analysis_it_cuts(dovecot, tmp_path, nursery,
                                                                   gateway_store):
    await _check_bound(dovecot, tmp_path, nursery, gateway_store, first=10, then=3)
