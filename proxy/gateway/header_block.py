"""One message header block read as Dovecot 2.3.19's header parser reads it: the one reader
behind ENVELOPE and BODYSTRUCTURE (`_parts`), SEARCH (`search`, `search_text`), SORT and THREAD
(`sortkeys`), BODY[HEADER.FIELDS] (`sections`) and the arrival date (`pop3_listing`).

Theory of operation
-------------------
Dovecot bounds a header block by its *values*, not its bytes (message-header-parser.c,
``MESSAGE_HEADER_BLOCK_DEFAULT_MAX_SIZE``, 10 MiB; `MimeLimits.max_header_bytes` here; checked
live against Dovecot 2.3.19 by tests/gateway_imapd/test_huge_header.py):

* a line's value is what follows ``Name:`` and at most one blank (a line without a colon, or
  whose name is longer than ``MESSAGE_HEADER_NAME_MAX_LEN``, is all value and has no name);
  a continuation line (RFC 5322 2.2.3 folding) is all value, its leading blank included; line
  ends never count;
* each line's value is cut to what is left of the bound, so the value crossing it is cut
  there and every later field keeps its name with an empty value (ENVELOPE then shows ``""``
  for a later Subject, SEARCH finds nothing in it, SORT sorts it as empty);
* the header still runs to its blank line, so the body starts where it does.

`Budget` counts (`line` one line, `skip` whole lines in bulk); `Fields` collects the fields of
a block as it arrives in blocks of whole lines (the MIME scanner hands over the lines between
those starting with "--", because a boundary line may end a header early); `fields()` reads a
whole block; `named()` finds the lines of given fields (HEADER.FIELDS).

Bounds of our own, in memory and CPU, for hostile headers (a value bound does not bound the
number of fields: ``a:`` lines have empty values): a kept field costs its name plus
`FIELD_COST`, and once `max_header_bytes` of such cost is kept only the names IMAP reads
(`NAMES_READ`) are kept further, the first and the latest of each, and the lines between them
are counted in bulk (C-speed regexes and counts, `Budget.skip`), never one Python step per
line. Past the value bound only those names are kept, once each (their values are empty). A
block whose bytes cannot reach the bound is not counted at all (`Budget.expect`). A folded
value is joined once from offsets, never copied per line.
"""

from __future__ import annotations

import re
from typing import Iterator

__all__ = ["Budget", "Fields", "fields", "blank_line", "lines", "named", "values", "NAMES_READ",
           "NAME_MAX"]

NAME_MAX = 1000   # Dovecot's MESSAGE_HEADER_NAME_MAX_LEN (RFC 5322 2.1.1): a longer name is a value
FIELD_COST = 512   # what a kept field costs of the bound besides its name (10 MiB: ~20,000 fields)
# What ENVELOPE (RFC 3501 7.4.2), BODYSTRUCTURE, SORT/THREAD (RFC 5256) and the arrival date read
NAMES_READ = frozenset({
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to",
    b"message-id", b"references", b"received", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"content-id", b"content-description", b"content-md5",
    b"content-disposition", b"content-language", b"content-location"})
# A field line's name, its blanks, the colon and one blank: what does not count as its value
_PREFIX = re.compile(rb"^(?![ \t])[^:\n]{0,%d}?[ \t]*:[ \t]?" % NAME_MAX, re.MULTILINE)
_CONTINUATIONS = re.compile(rb"(?:[ \t][^\n]*\n)*")
_BLANK = re.compile(rb"\n\r?\n")
_Entry = tuple[bytes, int, int, bytes]
UNREACHABLE = 1 << 62   # Budget.left of a block whose values cannot reach the bound
_CHUNK = 64 * 1024   # lines are counted one by one only inside the chunk the bound falls in


def named(names: frozenset[bytes] | set[bytes]) -> re.Pattern[bytes]:
    """A pattern finding the lines (at a line start) that begin a field named in `names`."""
    alternatives = b"|".join(re.escape(n) for n in sorted(names) if 0 < len(n) <= NAME_MAX
                             and n[:1] not in b" \t" and not set(n) & set(b":\r\n")) or b"(?!)"
    return re.compile(rb"^(?:" + alternatives + rb")[ \t]*:", re.MULTILINE | re.IGNORECASE)


_NAMES_READ = named(NAMES_READ)


def values(raw: bytes, start: int, end: int) -> int:
    """Value bytes of the whole lines raw[start:end], counted in C (its first line is a field
    line unless it starts with a blank)."""
    chunk = raw[start:end]
    prefixes = len(chunk) - len(_PREFIX.sub(b"", chunk))
    return len(chunk) - chunk.count(b"\n") - chunk.count(b"\r\n") - prefixes


class Budget:
    """What is left of the bound (value bytes) as the lines of one block are read in order."""

    def __init__(self, bound: int) -> None:
        self.left = bound

    def line(self, raw: bytes, pos: int, eol: int, continued: bool) -> tuple[bytes | None, int, int, int]:
        """raw[pos:eol] (its line end included), a continuation line when `continued`:
        (name: None for a continuation line, b"" for a line that is all value; where its value
        starts, after the colon and one blank; where its value ends, before the line end; how
        many value bytes were taken from the budget)."""
        end = eol - (raw[eol - 2:eol] == b"\r\n") - 1 if raw[eol - 1:eol] == b"\n" else eol
        name: bytes | None = None
        value = pos
        if not continued:
            colon = raw.find(b":", pos, end)
            name = raw[pos:colon].rstrip(b" \t") if colon >= 0 else b""
            if colon < 0 or len(name) > NAME_MAX:
                name = b""
            else:
                value = colon + 1 + (raw[colon + 1:colon + 2] in (b" ", b"\t"))
        taken = min(end - value, self.left)
        self.left -= taken
        return name, value, end, taken

    def expect(self, raw: bytes, start: int, end: int) -> None:
        """raw[start:end] is the rest of the block: when its bytes, line ends aside, cannot
        reach the bound, no value will be cut and none needs counting (`skip` is then free)."""
        most = end - start - raw.count(b"\n", start, end) - raw.count(b"\r\n", start, end)
        if most < self.left:
            self.left = UNREACHABLE

    def skip(self, raw: bytes, start: int, end: int) -> int:
        """Take the values of the whole lines raw[start:end] in bulk; returns where the bound
        falls in them (the start of the line it falls in, whose values are not taken), or
        `end` when it is not reached."""
        if self.left > UNREACHABLE // 2:   # `expect` found the bound out of reach
            return end
        pos = start
        while pos < end:
            stop = raw.find(b"\n", min(pos + _CHUNK, end) - 1, end)
            stop = end if stop < 0 else stop + 1
            count = values(raw, pos, stop)
            if count <= self.left:
                self.left -= count
                pos = stop
                continue
            while pos < stop:   # the bound falls in this chunk: line by line
                eol = raw.find(b"\n", pos, stop) + 1 or stop
                count = values(raw, pos, eol)
                if count > self.left:   # what is left is for the caller to cut this line with
                    return pos
                self.left -= count
                pos = eol
        return end


def lines(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(pos, eol) of each line of the header block raw[start:end], to its blank line."""
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        eol = end if nl < 0 else nl + 1
        if eol - pos <= 2 and raw[pos:eol] in (b"\n", b"\r\n"):
            return
        yield pos, eol
        pos = eol


def blank_line(raw: bytes, start: int = 0, limit: int | None = None) -> int:
    """Where the blank line that ends the header block at `start` begins (len(raw): none
    that ends before `limit`, when given)."""
    if raw.startswith((b"\n", b"\r\n"), start):
        return start
    # One scan that stops at the first blank line: two finds (LF LF, LF CR LF) each ran to the
    # end of the message when its kind was absent (a CRLF message has no LF LF), so a message
    # of many small MIME parts cost O(parts x size).
    found = _BLANK.search(raw, start, len(raw) if limit is None else limit)
    return found.start() + 1 if found is not None else len(raw)


class Fields:
    """The fields of one header block, fed line by line (`add`), as (name, value) pairs in
    message order (`result`): the value without the colon's leading blanks and without its
    final line end, inner folding kept, NUL as U+FFFD (as Dovecot's parser gives them)."""

    def __init__(self, raw: bytes, bound: int) -> None:
        self.raw, self.budget = raw, Budget(bound)
        self.kept_left = bound   # FIELD_COST + name bytes of kept fields still allowed
        # (name, value start, end of the whole lines taken, cut piece) per kept field, in order
        self.kept: list[_Entry] = []
        self.late: dict[bytes, _Entry] = {}   # past the kept budget: the latest of each name
        self.firsts: set[bytes] = set()       # names kept past the kept budget or the bound
        self.current: tuple[dict | list, bytes | int] | None = None   # the field continued
        self.seen_line = False

    def add(self, pos: int, eol: int) -> None:
        """raw[pos:eol], one line of the block (its line end included)."""
        continued = self.seen_line and self.raw[pos:pos + 1] in (b" ", b"\t")
        self.seen_line = True
        name, value, body_end, taken = self.budget.line(self.raw, pos, eol, continued)
        if name is None:
            if self.current is not None and taken:
                where, key = self.current
                field, start, whole, _ = where[key]   # type: ignore[index]
                where[key] = ((field, start, eol, b"") if taken == body_end - pos   # type: ignore[index]
                              else (field, start, whole, self.raw[pos:pos + taken]))
            return
        self.current = None
        whole = taken == body_end - value
        self._keep((name, value, eol if whole else value,
                    b"" if whole else self.raw[value:value + taken]),
                   past_bound=taken == 0 and self.budget.left == 0)

    def add_block(self, start: int, end: int) -> None:
        """raw[start:end], whole lines of the block (no blank line among them). Line by line
        while fields are kept whole; once the kept budget is spent, only the lines of the
        names IMAP reads are, and the values between them are counted in bulk (C speed)."""
        raw, pos = self.raw, start
        while pos < end:
            if self.kept_left > 0 or not self.seen_line or raw[pos:pos + 1] in (b" ", b"\t"):
                eol = raw.find(b"\n", pos, end) + 1 or end
                self.add(pos, eol)
                pos = self._continuations(eol, end)
                continue
            found = _NAMES_READ.search(raw, pos, end)
            stop = end if found is None else found.start()
            self.current = None
            cut = self.budget.skip(raw, pos, stop)
            if cut < stop:   # the bound falls in a line of a field not kept: the rest is empty
                self.budget.left = 0
            pos = stop
            if found is not None:   # the field's first line, then its continuation lines
                eol = raw.find(b"\n", pos, end) + 1 or end
                self.add(pos, eol)
                pos = self._continuations(eol, end)

    def _continuations(self, pos: int, end: int) -> int:
        """Take the continuation lines at `pos` of the field just added; returns their end."""
        raw = self.raw
        match = _CONTINUATIONS.match(raw, pos, end)
        stop = match.end() if match else pos
        if stop == pos:
            return pos
        left = self.budget.left
        cut = self.budget.skip(raw, pos, stop)
        if self.current is not None and left > 0 and cut > pos:   # lines taken whole
            where, key = self.current
            field, start, whole, _ = where[key]   # type: ignore[index]
            where[key] = (field, start, cut, b"")   # type: ignore[index]
        if cut < stop:   # the bound falls in this line: taken up to it, the rest is empty
            eol = raw.find(b"\n", cut, stop) + 1 or stop
            self.add(cut, eol)
            self.budget.left = 0
        return stop

    def _keep(self, entry: _Entry, past_bound: bool) -> None:
        lname = entry[0].lower()
        if past_bound:   # an empty value: only the names IMAP reads, once each
            if lname not in NAMES_READ or lname in self.firsts:
                return
            self.firsts.add(lname)
        cost = FIELD_COST + len(entry[0])   # values are bounded by the bound itself
        if cost <= self.kept_left:
            self.kept_left -= cost
        elif lname not in NAMES_READ:
            self.kept_left = 0
            return
        else:   # past the kept budget: the first and the latest of the names IMAP reads
            self.kept_left = 0
            if lname in self.firsts and not past_bound:
                self.late[lname] = entry
                self.current = (self.late, lname)
                return
            self.firsts.add(lname)
        self.kept.append(entry)
        self.current = (self.kept, len(self.kept) - 1)

    def result(self) -> list[tuple[bytes, bytes]]:
        """The fields read so far (see the class docstring)."""
        raw = self.raw
        return [(name, _value(raw[start:whole] + cut))
                for name, start, whole, cut in [*self.kept, *self.late.values()]]


def _value(value: bytes) -> bytes:
    """A kept value as Dovecot's parser gives it (SKIP_INITIAL_LWSP: leading blanks skipped,
    but one kept of a value that is all blanks), final line end dropped, NUL as U+FFFD."""
    if value.endswith(b"\r\n"):
        value = value[:-2]
    elif value.endswith(b"\n"):
        value = value[:-1]
    stripped = value.lstrip(b" \t")
    if stripped or not value:
        value = stripped
    return value.replace(b"\0", b"\xef\xbf\xbd") if b"\0" in value else value


def fields(raw: bytes, bound: int, start: int = 0, end: int | None = None) -> list[tuple[bytes, bytes]]:
    """The fields of the header block at raw[start:end] (to its blank line), read as Dovecot
    reads them under `bound` value bytes (module docstring)."""
    collected = Fields(raw, bound)
    if end is None:
        stop = blank_line(raw, start)
    else:   # (searched no further than `end`: a part's header cut short by a boundary has no
        # blank line, and the next may be far off; + 2: a blank line's LF CR LF begun before
        # `end` is found as without the limit)
        stop = min(blank_line(raw, start, end + 2), end)
    collected.budget.expect(raw, start, stop)
    collected.add_block(start, stop)
    return collected.result()
