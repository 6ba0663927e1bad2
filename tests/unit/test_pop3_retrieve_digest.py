"""The synthetic UIDL of a message keyed by its content (gateway/pop3_retrieve.py): the same
digest whichever way it is made, and a big body hashed off the event loop's thread (the standard:
hashing, whose cost grows with the input, never stalls the other sessions)."""

from __future__ import annotations

import hashlib
import threading

import trio

from proxy.gateway import pop3_retrieve
from proxy.gateway.pop3_retrieve import DIGEST_INLINE, DIGEST_PREFIX, digest_of


def test_the_digest_is_the_bodys_sha256_small_or_big():
    for body in (b"", b"x" * DIGEST_INLINE, b"y" * (DIGEST_INLINE + 1)):
        assert trio.run(digest_of, body) == DIGEST_PREFIX + hashlib.sha256(body).hexdigest()


def test_a_big_body_is_hashed_off_the_event_loops_thread(monkeypatch):
    threads: list[threading.Thread] = []
    real = pop3_retrieve._hexdigest

    def recording(body: bytes) -> str:
        threads.append(threading.current_thread())
        return real(body)

    monkeypatch.setattr(pop3_retrieve, "_hexdigest", recording)
    body = b"z" * (DIGEST_INLINE + 1)
    assert trio.run(digest_of, body) == DIGEST_PREFIX + hashlib.sha256(body).hexdigest()
    assert threads and threads[0] is not threading.current_thread()
