"""The per-body cache blob, computed once per stored body (at POP3 ingest, at APPEND, or lazily
for bodies stored without one): `mime.analyze()` (ENVELOPE, BODY, BODYSTRUCTURE, virtual size,
part table) plus "th"/"tb", the decoded, case-folded header and body text that SEARCH TEXT/BODY
match against (RFC 3501 6.4.4), so a search is a substring test over cached strings."""

from __future__ import annotations

import json

from . import mime
from .search_text import text_blobs

# Bump when text_blobs() changes its output, so cached search texts are recomputed (2: raw
# 8-bit header bytes read as UTF-8, not as U+FFFD; 3: parts walked by the bounded scanner;
# 4: i;unicode-casemap instead of casefold, so "ß" no longer matches "ss"; 5: a MIME part
# whose Content-Type is empty has no searchable text, as in Dovecot).
TEXT_VERSION = 5


def analyze_for_store(raw: bytes, limits: mime.MimeLimits = mime.DEFAULT_LIMITS) -> bytes:
    data = mime.analyze(raw, limits)
    data["th"], data["tb"] = text_blobs(raw, limits)
    data["tv"] = TEXT_VERSION
    return json.dumps(data).encode()


def decode(blob: bytes | None) -> dict | None:
    """A cache blob that has everything (current MIME version and the search texts), or None."""
    if not blob:
        return None
    try:
        data = json.loads(blob)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != mime.CACHE_VERSION or "th" not in data \
            or data.get("tv") != TEXT_VERSION:
        return None
    return data
