"""RFC 5256 base subject and the i;unicode-casemap collation (RFC 5051), as SORT and THREAD use
them.

Theory of operation
-------------------
`base_subject(value)` follows RFC 5256 2.1 step by step (the numbers below are its steps), on
text that step (1) has already decoded (RFC 2047) and case-mapped, so the ABNF's "re", "fwd"
and "(fwd)" are matched in the mapped (upper) case. Whitespace is packed first, so every `*WSP`
of the ABNF is at most one space. The result also says whether the subject was a reply or
forward (steps 2, 3 and 6 removed something that says so), which THREAD=REFERENCES needs (5.B).

`casemap(text)` is i;unicode-casemap: each character's simple titlecase, then the full
(compatibility) decomposition. Comparing the results code point by code point equals comparing
their UTF-8 bytes, which is what the collation specifies.
"""

from __future__ import annotations

import email.errors
import re
import unicodedata

from .rfc2047 import decode_header

__all__ = ["base_subject", "casemap", "decode_words"]


def _simple_title(char: str) -> str:
    title = char.title()
    return title if len(title) == 1 else char   # simple mappings only ("ß" stays, not "Ss")


# Characters whose upper() is not their simple titlecase ("ß" -> "SS", "ǆ" -> "Ǆ" not "ǅ",
# Georgian Mkhedruli -> Mtavruli...): about 160, none above U+1EFFF (a test checks every code
# point). Every other character's simple titlecase is its upper(), which runs in C.
_UPPER_DIFFERS = {char: _simple_title(char) for char in map(chr, range(0x1F000))
                  if char.upper() != _simple_title(char)}
_SPECIAL = re.compile("([" + "".join(map(re.escape, _UPPER_DIFFERS)) + "])")


# Characters that decompose to a non-starter first (canonical combining class > 0): NFKD sorts
# each run of them by class, in time quadratic in the run (CPython's insertion sort, holding
# the interpreter): a body of 40,000 alternating U+0301 U+0323 took 1.2 s to map, a 1 MB one
# minutes. Real text has a few in a row; like UAX #15's Stream-Safe Text Format, a run of more
# than STREAM_SAFE_RUN gets U+034F (COMBINING GRAPHEME JOINER, a starter) after every
# STREAM_SAFE_RUN, so NFKD sorts runs of at most that many characters (twice as many marks
# where one decomposes to two, U+0F73). Needles are mapped alike.
# The pattern over every such character is ~10x slower than one over those of the BMP alone
# (its class has astral ranges), so it runs only on text that has a character past the first
# astral one (an emoji too).
STREAM_SAFE_RUN = 30
_NON_STARTERS = [c for c in map(chr, range(0x1F000))
                 if unicodedata.combining((unicodedata.normalize("NFKD", c) or "a")[0])]
_RUN_BMP, _RUN_ANY = (re.compile("[%s]{%d,}" % (re.escape("".join(chars)), STREAM_SAFE_RUN + 1))
                      for chars in ([c for c in _NON_STARTERS if c <= "\uffff"], _NON_STARTERS))
_FIRST_ASTRAL = min(c for c in _NON_STARTERS if c > "\uffff")


def _stream_safe(run: re.Match) -> str:
    text = run.group()
    return "\u034f".join(text[i:i + STREAM_SAFE_RUN] for i in range(0, len(text), STREAM_SAFE_RUN))


def stream_safe(text: str) -> str:
    """`text` with U+034F after every STREAM_SAFE_RUN characters of a longer run of
    non-starters (above); `casemap` of it is `casemap(text)` (idempotent: no run is left)."""
    return (_RUN_ANY if max(text) >= _FIRST_ASTRAL else _RUN_BMP).sub(_stream_safe, text)


def casemap(text: str) -> str:
    """RFC 5051 i;unicode-casemap: simple titlecase of each character, then NFKD."""
    if text.isascii():
        return text.upper()
    return casemap_stream_safe(stream_safe(text))


def casemap_stream_safe(text: str) -> str:
    """`casemap` of a text `stream_safe` went over already (search_text.bounded_casemap)."""
    if text.isascii():
        return text.upper()
    parts = _SPECIAL.split(text)   # plain runs at even indexes, special characters between
    parts[::2] = [run.upper() for run in parts[::2]]
    parts[1::2] = [_UPPER_DIFFERS[char] for char in parts[1::2]]
    return unicodedata.normalize("NFKD", "".join(parts))


def decode_words(value: bytes) -> str:
    """A header value with RFC 2047 encoded words decoded; raw 8-bit bytes read as UTF-8."""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        parts = decode_header(text)
    except (email.errors.HeaderParseError, ValueError):
        return text
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        try:
            out.append(chunk.decode(charset or "utf-8", "replace"))
        except (LookupError, ValueError):  # unknown charset, or a NUL in its name
            out.append(chunk.decode("utf-8", "replace"))
    # decode_header() drops the space between an encoded word and plain text: put it back
    # where the original had one (RFC 2047 6.2 removes it only between two encoded words).
    return _rejoin(parts, out)


def _rejoin(parts: list, texts: list[str]) -> str:
    joined: list[str] = []
    for n, text in enumerate(texts):
        if n and (isinstance(parts[n][0], str) or isinstance(parts[n - 1][0], str)) \
                and parts[n][1] != parts[n - 1][1]:
            if not (joined and joined[-1].endswith((" ", "\t"))) and not text.startswith((" ", "\t")):
                joined.append(" ")
        joined.append(text)
    return "".join(joined)


def _pack_whitespace(text: str) -> str:
    """(1): tabs and line breaks to spaces, runs of them to one space."""
    out, last_space = [], False
    for char in text:
        if char in " \t\r\n":
            if not last_space:
                out.append(" ")
            last_space = True
        else:
            out.append(char)
            last_space = False
    return "".join(out)


def _skip_blob(text: str, pos: int, end: int) -> int:
    """subj-blob = "[" *BLOBCHAR "]" *WSP in text[:end]: the position after it, or -1."""
    if pos >= end or text[pos] != "[":
        return -1
    close = pos + 1
    while close < end and text[close] not in "[]":
        close += 1
    if close >= end or text[close] != "]":
        return -1
    close += 1
    return close + 1 if close < end and text[close] == " " else close


def _skip_leader(text: str, pos: int, end: int) -> tuple[int, bool]:
    """(3) subj-leader = (*subj-blob subj-refwd) / WSP in text[:end]: (new position, was a
    reply/forward)."""
    start = pos
    if pos < end and text[pos] == " ":
        pos = start = pos + 1
    scan = pos
    while scan < end and text[scan] == "[":
        scan = _skip_blob(text, scan, end)
        if scan < 0:
            return start, False
    for word in ("RE", "FWD", "FW"):
        if text.startswith(word, scan, end):
            scan += len(word)
            break
    else:
        return start, False
    if scan < end and text[scan] == " ":
        scan += 1
    if scan < end and text[scan] == "[":
        scan = _skip_blob(text, scan, end)
        if scan < 0:
            return start, False
    if scan >= end or text[scan] != ":":
        return start, False
    return scan + 1, True


def base_subject(value: bytes) -> tuple[str, bool]:
    """(base subject, is a reply or forward) of a raw Subject header value. The steps move
    the ends of text[pos:end] and never copy it: each step is bounded by what it removes
    (module docstring)."""
    text = _pack_whitespace(casemap(decode_words(value)))
    pos, end, reply = 0, len(text), False
    while True:
        # (2) remove trailing subj-trailer = "(fwd)" / WSP, repeatedly
        while end > pos:
            if text[end - 1] == " ":
                end -= 1
            elif text.endswith("(FWD)", pos, end) and end - 5 >= pos:
                end -= 5
                reply = True
            else:
                break
        while True:
            # (3) remove a subj-leader
            new, was_reply = _skip_leader(text, pos, end)
            found = new != pos
            reply = reply or was_reply
            pos = new
            # (4) remove a leading subj-blob if something is left after it
            after = _skip_blob(text, pos, end)
            if after >= 0 and after < end:
                pos, found = after, True
                if not was_reply:
                    # (3) failed at the blob just removed: from each later blob of its run it
                    # scans the same blobs to the same place and fails again, so (4) removes
                    # them all now (a rescan per blob: "[b] " * 20,000 took 65 s)
                    while 0 <= (after := _skip_blob(text, pos, end)) < end:
                        pos = after
            if not found:   # (5) repeat (3) and (4) until nothing matches
                break
        # (6) "[fwd:" ... "]": remove both and repeat from (2)
        if text.startswith("[FWD:", pos, end) and end - pos >= 6 and text[end - 1] == "]":
            end -= 1
            pos += 5
            reply = True
            continue
        return text[pos:end], reply
