"""Every function that reads a stored message's bytes in the gateway, as one callable each.

The fuzz harnesses (bench/fuzz/atheris_analysis.py, bench/fuzz/growth.py) and the regression
run of found inputs (test_fuzz_hostile_mail.py) call these. Each takes the raw message and returns
something (the value does not matter to the harness); any exception it raises is a finding,
except the refusals the protocol defines (a BINARY section that cannot be decoded: `BinaryError`,
answered NO [UNKNOWN-CTE] / NO [PARSE], RFC 3516 4.3).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from proxy.gateway import analysis, mime, search, sortkeys, thread
from proxy.gateway.binary import BinaryError, binary_section
from proxy.gateway.pop3_listing import internaldate
from proxy.gateway.preview import preview
from proxy.gateway.search_text import text_blobs
from proxy.gateway.sections import fetch_section, find_part
from proxy.gateway.sort import Item, sort_items
from proxy.imap import Atom

_SECTIONS = ("HEADER", "TEXT", "1", "1.MIME", "1.1", "2.HEADER",
             "HEADER.FIELDS (SUBJECT FROM TO MESSAGE-ID)", "HEADER.FIELDS.NOT (RECEIVED)")


def _sections(raw: bytes) -> object:
    parts = mime.from_cache(json.loads(analysis.analyze_for_store(raw))).parts
    tree = mime.table_to_parts(parts)
    return [fetch_section(raw, s, parts=tree) for s in _SECTIONS]


def _binary(raw: bytes) -> object:
    tree = mime.parse(raw)
    out = []
    for path, whole in (([], True), ([1], False), ([1, 1], False), ([2], False)):
        try:
            out.append(binary_section(raw, find_part(tree, path) if path else tree, whole=whole).data)
        except BinaryError:
            out.append(None)
    return out


def _sort_thread(raw: bytes) -> object:
    fields = sortkeys.extract(raw)
    items = [Item(1, 1, 0.0, len(raw), fields), Item(2, 2, 1.0, 10, fields)]
    for key in ("SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO", "DATE"):
        sort_items(items, [(key, False)])
    return thread.render(thread.references(items)), thread.render(thread.ordered_subject(items))


class _Msg:
    seq = uid = 1
    size = 0
    flags: tuple = ()
    internaldate = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


_KEYS = [search.parse_search([Atom(args[0]), *args[1:]]) for args in (
    [b"FROM", b"zz"], [b"SUBJECT", b"zz"], [b"HEADER", b"Message-ID", b"zz"],
    [b"TO", b"zz"], [b"SENTSINCE", b"1-Jan-2000"], [b"TEXT", b"zz"])]


def _search(raw: bytes) -> object:
    msg = _Msg(raw)
    return [search.matches(key, msg) for key in _KEYS]


#: name -> callable(raw): what ingest runs (analysis, sort record, arrival date) and what
#: FETCH/SEARCH/SORT/THREAD run on a stored body.
TARGETS: dict[str, Callable[[bytes], object]] = {
    "mime.analyze": mime.analyze,
    "text_blobs": text_blobs,
    "sortkeys.extract_record": sortkeys.extract_record,
    "internaldate": internaldate,
    "preview": preview,
    "sections": _sections,
    "binary": _binary,
    "sort+thread": _sort_thread,
    "search": _search,
}

#: what ingest runs on every new body in its worker thread (ingest_batches.analysed)
INGEST = ("mime.analyze", "text_blobs", "sortkeys.extract_record", "internaldate")
