"""search_text.bounded_casemap maps a search text in chunks, so that one NFKD call (one C call,
holding the interpreter) never covers more than about `_MAP_CHUNK` characters. A chunk may only
end before a starter; a run of combining marks has none, so the run must first get the
stream-safe joiners (basesubject, every STREAM_SAFE_RUN marks), or the whole run is one chunk:
a POP3 message of 100 MB of marks was one NFKD call of 50 million characters (~1.4 s with every
session stalled)."""

from __future__ import annotations

import random
import unicodedata

from proxy.gateway import search_text
from proxy.gateway.basesubject import STREAM_SAFE_RUN, casemap


def test_a_run_of_marks_is_mapped_in_chunks(monkeypatch):
    rnd = random.Random(7)
    chunk = search_text._MAP_CHUNK
    marks = "\u0301\u0323\u0308\u0344\u0f73\U0001d165"
    texts = ["a" + "\u0301\u0323" * (3 * chunk),
             "x" + "".join(rnd.choice(marks) for _ in range(5 * chunk)) + "y",
             "\ufdfa\u00e9" * 1000 + "\u0301" * (2 * chunk) + "b"]
    expected = [casemap(text) for text in texts]
    normalize, longest = unicodedata.normalize, [0]

    def measured(form: str, text: str) -> str:
        longest[0] = max(longest[0], len(text))
        return normalize(form, text)

    monkeypatch.setattr(unicodedata, "normalize", measured)
    for text, whole in zip(texts, expected, strict=True):
        longest[0] = 0
        cap = len(text.encode()) + search_text.TEXT_SLACK
        assert search_text.bounded_casemap(text, cap) == whole[:cap]
        assert longest[0] <= chunk + STREAM_SAFE_RUN + 1, f"one NFKD call of {longest[0]}"
