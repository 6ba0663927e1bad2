"""Cheap analysis of one line part: trailing literal marker and message head.

These run on every line the relay sees, so they use ``find``/``rfind``,
slicing and ``fullmatch`` on short strings; they never tokenise arguments.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ._errors import ProtocolError

__all__ = [
    "LiteralMarker",
    "find_literal",
    "is_tag",
    "parse_command_head",
    "parse_response_head",
    "parse_tagged_head",
    "parse_resp_text",
    "PLAIN_COMMAND_RE",
    "PLAIN_TAGGED_RE",
    "PLAIN_ANSWER_RE",
    "STATUS_NAMES",
    "TAGGED_STATUSES",
]

# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">.  ASTRING-CHAR is
# ATOM-CHAR or "]"; ATOM-CHAR is any CHAR except atom-specials
# ( ) { SP CTL % * " \ ].
_TAG_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")
# Command and response names are atoms (RFC 3501 §9 command, x-command).
_NAME_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")

_TAG = rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+"
_NAME = rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+"
# Fast paths: one regex call for a well-formed head; errors are then
# diagnosed by the step-by-step code below.
_COMMAND_HEAD_RE = re.compile(rb"(%s) (%s)(?: (%s))?(?= |\Z)" % (_TAG, _NAME, _NAME))
_UNTAGGED_HEAD_RE = re.compile(rb"\* (?:([0-9]{1,20}) )?(%s)(?= |\Z)" % _NAME)
# Whole lines a parser is sure to accept as they are (the relay's common case, see
# ``CommandParser.plain_line``/``ResponseParser.tagged_line``): a command whose name is
# letters (a UID's subcommand too), then anything but NUL, CR, LF or a literal's braces; a
# tagged OK/NO/BAD and any text.
PLAIN_COMMAND_RE = re.compile(
    rb"(%s) ([A-Za-z]+)(?: ([A-Za-z]+))?(?: [^\x00\r\n{}]*)?\r\n" % _TAG)
PLAIN_TAGGED_RE = re.compile(rb"(%s) ((?i:OK|NO|BAD))(?: [^\n]*)?\r\n" % _TAG)
# An answer a response parser is sure to read as it is, without a literal or a continuation
# (the relay's fused step, relay/imap_fused.py): complete untagged lines, each ``* [number]
# name`` (a name of letters: never a digits-only name without a number, which
# ``parse_response_head`` refuses) and text that does not end in ``}`` (where a literal's
# marker would be, RFC 3501 4.3: such a line is left to the parser), then at most one tagged
# status line as PLAIN_TAGGED_RE reads it (its tag and status the groups; None without one).
PLAIN_ANSWER_RE = re.compile(
    rb"(?:\* (?:[0-9]{1,20} )?[A-Za-z]+(?: [^\r\n]*[^\r\n}])?\r\n)+"
    rb"(?:(%s) ((?i:OK|NO|BAD))(?: [^\n]*)?\r\n)?" % _TAG)

#: RFC 9051 §7.1: untagged status responses.
STATUS_NAMES = frozenset({b"OK", b"NO", b"BAD", b"PREAUTH", b"BYE"})
#: RFC 9051 §7.1: tagged status responses.
TAGGED_STATUSES = frozenset({b"OK", b"NO", b"BAD"})

# Sizes with more digits than this are "too big" without calling int():
# 10**20 exceeds any limit, and int() on huge digit strings is slow or raises.
_MAX_SIZE_DIGITS = 20
TOO_BIG = 1 << 80


class LiteralMarker(NamedTuple):
    """A literal announced at the end of a line part."""

    start: int  # index of "{" (or "~") in the line
    size: int  # TOO_BIG when the digit string is absurdly long
    synchronizing: bool
    binary: bool


def find_literal(line: bytes) -> LiteralMarker | None:
    """Detect ``{n}``, ``{n+}`` (RFC 7888 §3) or ``~{n}`` (RFC 3516 §4.1) at the end.

    Anything else ending in ``}`` is not a literal (``foo}`` is a valid atom);
    the tokeniser, if enabled, reports a stray ``{``.
    """
    if not line.endswith(b"}"):
        return None
    brace = line.rfind(b"{")
    if brace < 0:
        return None
    digits = line[brace + 1 : -1]
    sync = not digits.endswith(b"+")
    if not sync:
        digits = digits[:-1]
    if not digits or not digits.isdigit():
        return None
    size = int(digits) if len(digits) <= _MAX_SIZE_DIGITS else TOO_BIG
    binary = brace > 0 and line[brace - 1] == 0x7E
    return LiteralMarker(brace - 1 if binary else brace, size, sync, binary)


def _syntax(text: str, tag: bytes | None = None) -> ProtocolError:
    return ProtocolError("bad_syntax", text, tag=tag)


def is_tag(value: bytes) -> bool:
    return _TAG_RE.fullmatch(value) is not None


def parse_command_head(line: bytes, end: int) -> tuple[bytes, bytes, int]:
    """Split ``tag SP name [SP subcommand]`` off a command's first line part.

    ``end`` is where the trailing literal marker starts (``len(line)`` if none).

    Returns:
        ``(tag, name, args_pos)``; ``name`` is upper-cased and ``UID`` is
        joined with its subcommand (RFC 3501 §6.4.8).

    Raises:
        ProtocolError: bad_syntax, tagged when the tag is valid.
    """
    m = _COMMAND_HEAD_RE.match(line, 0, end)
    if m is not None:
        name = m.group(2).upper()
        if name != b"UID":
            return m.group(1), name, m.end(2)
        if m.group(3) is not None:
            return m.group(1), b"UID " + m.group(3).upper(), m.end()
    if not line:
        raise _syntax("Empty command line")
    sp = line.find(b" ", 0, end)
    tag = line[:sp] if sp >= 0 else line[:end]
    if _TAG_RE.fullmatch(tag) is None:
        raise _syntax("Invalid tag")
    if sp < 0:
        raise _syntax("Missing command name", tag)
    name, pos = _word(line, sp + 1, end)
    if _NAME_RE.fullmatch(name) is None:
        raise _syntax("Invalid command name", tag)
    name = name.upper()
    if name == b"UID":
        if pos >= end:
            raise _syntax("Missing UID subcommand", tag)
        sub, pos = _word(line, pos + 1, end)
        if _NAME_RE.fullmatch(sub) is None:
            raise _syntax("Invalid UID subcommand", tag)
        name = b"UID " + sub.upper()
    return tag, name, pos


def _word(line: bytes, start: int, end: int) -> tuple[bytes, int]:
    """Return the bytes from ``start`` to the next SP (or ``end``) and that index."""
    sp = line.find(b" ", start, end)
    if sp < 0:
        sp = end
    return line[start:sp], sp


def parse_response_head(line: bytes) -> tuple[int | None, bytes, int]:
    """Split ``* [number SP] name`` off an untagged response.

    Returns ``(number, name, pos)`` with ``pos`` just after the name.
    """
    m = _UNTAGGED_HEAD_RE.match(line)
    if m is not None and (m.group(1) is not None or not m.group(2).isdigit()):
        number = m.group(1)
        return (None if number is None else int(number)), m.group(2).upper(), m.end()
    word, pos = _word(line, 2, len(line))
    number = None
    if word.isdigit():
        if len(word) > _MAX_SIZE_DIGITS:
            raise _syntax("Invalid number")
        number = int(word)
        if pos >= len(line):
            raise _syntax("Missing response name")
        word, pos = _word(line, pos + 1, len(line))
    if _NAME_RE.fullmatch(word) is None:
        raise _syntax("Invalid response name")
    return number, word.upper(), pos


def parse_tagged_head(line: bytes) -> tuple[bytes, bytes, int]:
    """Split ``tag SP status`` off a tagged response; status must be OK/NO/BAD."""
    tag, pos = _word(line, 0, len(line))
    if _TAG_RE.fullmatch(tag) is None:
        raise _syntax("Invalid tag")
    if pos >= len(line):
        raise _syntax("Missing response status", tag)
    status, pos = _word(line, pos + 1, len(line))
    status = status.upper()
    if status not in TAGGED_STATUSES:
        raise _syntax("Invalid response status", tag)
    return tag, status, pos


def parse_resp_text(line: bytes, pos: int) -> tuple[bytes | None, bytes | None, bytes]:
    """Parse ``[SP] ["[" code [SP args] "]" SP] text`` (RFC 9051 §9 resp-text).

    Lenient: a ``[`` without ``]`` is plain text.  Returns
    ``(code, code_args, text)`` with ``code`` upper-cased.
    """
    if line.startswith(b" ", pos):
        pos += 1
    if not line.startswith(b"[", pos):
        return None, None, line[pos:]
    close = line.find(b"]", pos)
    if close < 0:
        return None, None, line[pos:]
    inner = line[pos + 1 : close]
    sp = inner.find(b" ")
    code, args = (inner, None) if sp < 0 else (inner[:sp], inner[sp + 1 :])
    text = line[close + 1 :]
    if text.startswith(b" "):
        text = text[1:]
    return code.upper(), args, text
