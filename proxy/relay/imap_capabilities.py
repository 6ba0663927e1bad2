"""What an IMAP upstream announces: its capability lists, split once and shared, and what of
them the proxy relays to a logged-in client (RFC 3501 7.2.1).

An upstream announces the same few capability lists to every session: the functions below are
cached per list instead of run for every login, and sessions share one tuple per list (an idle
session would otherwise keep ~40 small bytes objects, 1.9 KB). Only ordinary lists are kept (at
most CACHED_CAPABILITIES names of CACHED_CAPABILITY_LENGTH bytes), so the caches stay small
whatever an upstream sends.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["CACHED_CAPABILITIES", "CACHED_CAPABILITY_LENGTH", "capabilities_from", "relayable",
           "upper_set"]

# What the proxy cannot relay, or must not offer after login (RFC 3501 7.2.1; STARTTLS/AUTH make
# no sense after login; of COMPRESS, only DEFLATE is relayed, imap_compress.py).
_DROPPED_PREFIXES = (b"AUTH=", b"COMPRESS=", b"STARTTLS", b"LOGINDISABLED", b"SASL-IR",
                     b"LOGIN-REFERRALS", b"XCLIENT", b"X-")
_KEPT = (b"COMPRESS=DEFLATE",)

CACHED_CAPABILITIES = 256
CACHED_CAPABILITY_LENGTH = 256


def capabilities_from(raw: bytes) -> tuple[bytes, ...]:
    if len(raw) <= CACHED_CAPABILITY_LENGTH * 8:
        return _split_cached(raw)
    return tuple(raw.split())


def _split(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw.split())


_split_cached = lru_cache(maxsize=16)(_split)


def _cacheable(capabilities: tuple[bytes, ...]) -> bool:
    return (len(capabilities) <= CACHED_CAPABILITIES
            and max(map(len, capabilities), default=0) <= CACHED_CAPABILITY_LENGTH)


def upper_set(capabilities: tuple[bytes, ...]) -> frozenset[bytes]:
    """The capabilities upper-cased, for case-insensitive membership (RFC 3501 9: atoms)."""
    return _upper_cached(capabilities) if _cacheable(capabilities) else _upper_of(capabilities)


def _upper_of(capabilities: tuple[bytes, ...]) -> frozenset[bytes]:
    return frozenset(c.upper() for c in capabilities)


_upper_cached = lru_cache(maxsize=16)(_upper_of)


def relayable(capabilities: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The upstream's post-login capabilities minus what the proxy cannot relay."""
    if _cacheable(capabilities):
        return _relayable_cached(capabilities)
    return _relayable(capabilities)


def _relayable(capabilities: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(c for c in capabilities
                 if not c.upper().startswith(_DROPPED_PREFIXES) or c.upper() in _KEPT)


_relayable_cached = lru_cache(maxsize=16)(_relayable)
