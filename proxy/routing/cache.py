"""A lookup's answers kept for a while, so a busy directory is asked once per user per TTL.

Routes (`Target`) are kept `ttl` seconds, refusals `negative_ttl` seconds, each in its own
bounded LRU+TTL map (cachetools.TTLCache), at most `max_entries` entries each. The key holds the
protocol, the user and a keyed hash of the password (HMAC-SHA256 under a per-process random key):
a cached answer only ever applies to the same password, and the cache never holds one in clear.
The client's IP is not part of the key: a directory that answers per IP should run with the
cache off (`ttl: 0`, `negative_ttl: 0`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Callable

from cachetools import TTLCache

from ..config import LookupCache
from .answers import Answer, LoginQuery, Target

_KEY = os.urandom(32)

CacheKey = tuple[str, str, bytes]


class AnswerCache:
    def __init__(self, settings: LookupCache, timer: Callable[[], float] = time.monotonic):
        size = max(settings.max_entries, 1)
        self._routes: TTLCache[CacheKey, Answer] | None = (
            TTLCache(size, settings.ttl, timer) if settings.ttl > 0 and settings.max_entries else None)
        self._refusals: TTLCache[CacheKey, Answer] | None = (
            TTLCache(size, settings.negative_ttl, timer)
            if settings.negative_ttl > 0 and settings.max_entries else None)

    @staticmethod
    def key(query: LoginQuery) -> CacheKey:
        digest = hmac.new(_KEY, query.password, hashlib.sha256).digest()
        return (query.protocol, query.user, digest)

    def get(self, key: CacheKey) -> Answer | None:
        for cache in (self._routes, self._refusals):
            if cache is not None:
                answer = cache.get(key)
                if answer is not None:
                    return answer
        return None

    def put(self, key: CacheKey, answer: Answer) -> None:
        cache = self._routes if isinstance(answer, Target) else self._refusals
        if cache is not None:
            cache[key] = answer
            if isinstance(answer, Target) and self._refusals is not None:
                self._refusals.pop(key, None)

    def __len__(self) -> int:
        return sum(len(c) for c in (self._routes, self._refusals) if c is not None)
