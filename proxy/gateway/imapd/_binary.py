"""FETCH BINARY / BINARY.PEEK / BINARY.SIZE (RFC 3516 4.2) for one chunk of messages.

The FETCH handler loads a chunk (`_messages.fetch`), then calls `decode_chunk()`, which decodes
every BINARY section asked for, once per message (BINARY[1] and BINARY.SIZE[1] share the work):
in a worker thread when the chunk's bodies are big (decoding is linear in their size, DESIGN.md:
nothing one client sends may hold the event loop). An undecodable section is kept as its error
and raised as NO [UNKNOWN-CTE] / NO [PARSE] only when `render()` reaches that message, so the
messages before it are answered, as Dovecot does.
"""

from __future__ import annotations

from .._parts import DEFAULT_LIMITS
from ..binary import BinaryError, Decoded, binary_section
from ..mime import Part, table_to_parts
from ..sections import fetch_section, find_part, split_section, text_part
from ..workers import Workers
from ._caches import ANALYZE_IN_THREAD

Result = Decoded | BinaryError
Wanted = tuple[bytes, bool]   # (section, BINARY.SIZE)


def wanted(items) -> list[Wanted]:
    """The BINARY sections a FETCH asks for, each once."""
    return list(dict.fromkeys((item.section, item.name == b"BINARY.SIZE")
                              for item in items if item.binary))


async def decode_chunk(wanted: list[Wanted], infos, raws, workers: Workers, *,
                       max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes,
                       ) -> list[dict[Wanted, Result] | None]:
    """Per message: (section, size) -> decoded bytes or the error (None: the message is gone).
    `max_header_bytes`: the header bound HEADER.FIELDS honours (`sections`)."""
    if not wanted:
        return [None] * len(raws)
    work = lambda: [_decode(wanted, info, raw, max_header_bytes)  # noqa: E731
                    for info, raw in zip(infos, raws, strict=True)]
    if sum(len(raw) for raw in raws if raw is not None) > ANALYZE_IN_THREAD:
        return await workers.command(work)
    return work()


def _decode(wanted: list[Wanted], info, raw: bytes | None,
            bound: int) -> dict[Wanted, Result] | None:
    if info is None or raw is None:
        return None
    root = table_to_parts(info.parts)
    by_section: dict[bytes, Result] = {}

    def section(name: bytes) -> Result:
        if name not in by_section:
            try:
                by_section[name] = _section(raw, root, name, bound)
            except BinaryError as exc:
                by_section[name] = exc
        return by_section[name]

    out: dict[Wanted, Result] = {}
    for name, size in wanted:
        path, text, _ = split_section(name)
        decoded = find_part(root, path) if not text else text_part(root, path) if text == b"TEXT" else None
        # Dovecot sizes an existing decoded section from the whole message decoded: an
        # undecodable part anywhere fails BINARY.SIZE, while BINARY[n] only fails on its own parts
        whole = section(b"") if size and decoded is not None else None
        out[(name, size)] = whole if isinstance(whole, BinaryError) else section(name)
    return out


def _section(raw: bytes, root: Part, name: bytes,
             bound: int = DEFAULT_LIMITS.max_header_bytes) -> Decoded:
    """BINARY[name]. RFC 3516 6 allows part numbers only (section-binary); Dovecot 2.3 takes
    any BODY section, and so does the gateway: [path.]TEXT is the body of that message
    decoded, header sections (HEADER, HEADER.FIELDS, MIME) are sent as BODY[] sends them
    (a header has no transfer encoding)."""
    path, text, _ = split_section(name)
    if not text:
        return binary_section(raw, find_part(root, path), whole=not path)
    if text == b"TEXT":
        return binary_section(raw, text_part(root, path), whole=False)
    return Decoded(fetch_section(raw, name, parts=root, max_header_bytes=bound), literal8=False)
