"""The per-body cache blob, computed once per stored body (at POP3 ingest, at APPEND, or lazily
for bodies stored without one): `mime.analyze()` (ENVELOPE, BODY, BODYSTRUCTURE, virtual size,
part table) plus "th"/"tb", the decoded, case-folded header and body text that SEARCH TEXT/BODY
match against (RFC 3501 6.4.4), so a search is a substring test over cached strings."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii

from . import mime
from .search_text import text_blobs

# Bump when text_blobs() changes its output, so cached search texts are recomputed (2: raw
# 8-bit header bytes read as UTF-8, not as U+FFFD; 3: parts walked by the bounded scanner;
# 4: i;unicode-casemap instead of casefold, so "ß" no longer matches "ss"; 5: a MIME part
# whose Content-Type is empty has no searchable text, as in Dovecot; 6: header fields read by
# header_block.py: a folded field is one field, its continuation lines in its value, and a line
# without a colon a field of its own with no name, as Dovecot reads them).
TEXT_VERSION = 6


def analyze_for_store(raw: bytes, limits: mime.MimeLimits = mime.DEFAULT_LIMITS) -> bytes:
    data = mime.analyze(raw, limits)
    data["tv"] = TEXT_VERSION
    return _with_texts(data, list(text_blobs(raw, limits)))


def _with_texts(data: dict, texts: list[str]) -> bytes:
    """`data` as JSON with "th" and "tb" (`texts`, taken from the list) added, the same object
    `json.dumps` would write, built so that a text is held at most twice at a time (the text
    and its JSON, then that and its bytes): `json.dumps(...).encode()` of the whole held the
    text, its JSON, their join, and then the blob as str and as bytes (a 50 MB APPEND's peak)."""
    pieces = [json.dumps(data)[:-1].encode()]   # without its closing brace
    for key in ("th", "tb"):
        escaped = encode_basestring_ascii(texts.pop(0))   # the list's reference is gone
        pieces += [b', "%s": ' % key.encode(), escaped.encode("ascii")]
        del escaped
    pieces.append(b"}")
    return b"".join(pieces)


def decode(blob: bytes | None, limits: mime.MimeLimits = mime.DEFAULT_LIMITS) -> dict | None:
    """A cache blob that has everything and is current (`judge`), or None."""
    return judge(blob, limits)[0]


def judge(blob: bytes | None, limits: mime.MimeLimits = mime.DEFAULT_LIMITS) -> tuple[dict | None, bool]:
    """(the blob's analysis if it is current, else None; whether a new analysis may replace it).

    Current: this code's versions (MIME and search texts) and an ENVELOPE that `limits` writes
    the same (`mime.EnvelopeReach.fits`: a message whose address fields are all below the bound
    is current under any bound above them, so changing `gateway.limits.envelope_max_addresses`
    redoes only the messages it changes). A blob of a NEWER version (a newer process on the
    same PostgreSQL store, during a rolling upgrade) is not current here but must not be
    replaced: the caller analyses the body in memory, so the two processes do not rewrite each
    other's analyses in turn; an older, damaged or missing one may be."""
    if not blob:
        return None, True
    try:
        data = json.loads(blob)
    except ValueError:
        return None, True
    if not isinstance(data, dict):
        return None, True
    version, text_version = data.get("v"), data.get("tv")
    if not isinstance(version, int) or not isinstance(text_version, int):
        return None, True
    if (version, text_version) != (mime.CACHE_VERSION, TEXT_VERSION):
        return None, version <= mime.CACHE_VERSION and text_version <= TEXT_VERSION
    if "th" not in data or not mime.EnvelopeReach.fits(data.get("eneed"), data.get("ecut"),
                                                        limits.max_envelope_addresses):
        return None, True
    return data, True
