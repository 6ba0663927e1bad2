"""FETCH PREVIEW (RFC 8970) for one chunk of messages: the preview text of each body
(`gateway.preview`), kept in the MIME cache's LRU by body id (bodies never change), computed in
a worker thread when the chunk's uncached bodies are big (DESIGN.md: no input-sized work on the
event loop)."""

from __future__ import annotations

from ..preview import preview
from ._caches import ANALYZE_IN_THREAD


async def previews(mime, metas, infos, raws, wanted: bool) -> list[str | None]:
    """Per message: its preview text, or None (not asked for, or the body is gone)."""
    if not wanted:
        return [None] * len(metas)
    out = [mime.previews.get(m.body_id) for m in metas]
    todo = [n for n, text in enumerate(out) if text is None and raws[n] is not None
            and infos[n] is not None]
    work = lambda: [preview(raws[n], mime.limits, infos[n].parts) for n in todo]   # noqa: E731
    if sum(len(raws[n]) for n in todo) > ANALYZE_IN_THREAD:
        found = await mime.workers.command(work)
    else:
        found = work()
    for n, text in zip(todo, found, strict=True):
        out[n] = text
        mime.previews.put(metas[n].body_id, text)
    return out
