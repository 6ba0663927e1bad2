"""Argument tokeniser: atoms, quoted strings, lists and literal slots.

Used only when a parser is created with ``parse_args=True``.  It is fed one
line part at a time (the framer has already cut off the trailing literal
marker), then ``add_literal()`` for each literal, then ``finish()``.  State
(the open-list stack) survives between line parts, so nesting, depth and
token-count limits are checked as the tokens arrive.

Grammar (RFC 3501 §9 / RFC 9051 §9), deliberately liberal where harmless:

* atom: 1*ATOM-CHAR, also allowing ``%``, ``*``, ``\\`` and ``]`` (list
  wildcards, sequence sets, flags, resp-specials) and bracketed sections that
  may hold spaces and parentheses (a ``[`` with no later ``]`` is a plain
  ATOM-CHAR), so ``BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>``
  is one atom.  8-bit bytes are accepted.
* quoted: DQUOTE *(QUOTED-CHAR / "\\" quoted-specials) DQUOTE; only ``\\\\``
  and ``\\"`` escapes; CR, LF and NUL rejected (RFC 9051 §9 allows UTF-8).
* list: "(" [token *(SP token)] ")"; runs of SP are tolerated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import ProtocolError
from ._limits import Limits

__all__ = ["Atom", "Literal", "LiteralRef", "Token", "Tokenizer"]


class Atom(bytes):
    """An atom (NIL, numbers, flags, sequence sets, fetch attributes)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({bytes(self)!r})"


class Literal(bytes):
    """A literal's payload, collected (parsers made with ``collect_literals=True``): told apart
    from a quoted string where the grammar needs it (RFC 3502 MULTIAPPEND: date vs message)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Literal({len(self)} bytes)"


@dataclass(frozen=True, slots=True)
class LiteralRef:
    """Placeholder for a literal whose payload was streamed, not collected."""

    size: int


# One parsed argument: an atom or string (bytes), a streamed literal, or a parenthesised list.
Token = bytes | LiteralRef | tuple["Token", ...]


# A "[" starts a bracketed section when a "]" follows on the line; otherwise it
# is a plain ATOM-CHAR (it is not an atom-special).
_ATOM_RE = re.compile(rb"(?:[^\x00-\x20\x7f(){\"\[]|\[[^\]\x00\r\n]*\]|\[)+")
_QUOTED_RE = re.compile(rb'"((?:[^"\\\x00\r\n]|\\["\\])*)"')
_ESCAPE_RE = re.compile(rb"\\(.)", re.S)

_SP, _LPAREN, _RPAREN, _DQUOTE, _LBRACE, _TILDE = 0x20, 0x28, 0x29, 0x22, 0x7B, 0x7E


def _syntax(text: str) -> ProtocolError:
    return ProtocolError("bad_syntax", text)


class Tokenizer:
    """Incremental tokeniser for one command's or response's arguments."""

    __slots__ = ("_stack", "_count", "_max_depth", "_max_args", "_need_sep")

    def __init__(self, limits: Limits) -> None:
        self._stack: list[list[Token]] = [[]]
        self._count = 0
        self._max_depth = limits.max_depth
        self._max_args = limits.max_args
        # True right after a value: the next value needs a SP first.
        self._need_sep = True

    def feed(self, line: bytes, pos: int, end: int, literal_follows: bool) -> None:
        """Tokenise ``line[pos:end]``; a literal marker follows at ``end`` if told.

        The position of a literal is checked here, before ``LiteralStart`` is
        emitted, so a client never gets ``+`` for a misplaced literal.

        Raises:
            ProtocolError: bad syntax, too deep, too many arguments.
        """
        while pos < end:
            c = line[pos]
            if c == _SP:
                pos += 1
                self._need_sep = False
            elif c == _RPAREN:
                self._close_list()
                pos += 1
            elif self._need_sep:
                raise _syntax("Missing space between arguments")
            elif c == _LPAREN:
                self._open_list()
                pos += 1
            elif c == _LBRACE or c == _TILDE and line.startswith(b"{", pos + 1):
                # A valid literal marker ends the line part and was cut off
                # by the framer (``end``); anything else is malformed.
                raise _syntax("Invalid literal")
            elif c == _DQUOTE:
                m = _QUOTED_RE.match(line, pos, end)
                if m is None:
                    raise _syntax("Invalid quoted string")
                value = m.group(1)
                if b"\\" in value:
                    value = _ESCAPE_RE.sub(rb"\1", value)
                self._append(value)
                pos = m.end()
            else:
                m = _ATOM_RE.match(line, pos, end)
                if m is None:
                    raise _syntax("Invalid atom")
                self._append(Atom(m.group()))
                pos = m.end()
        if literal_follows:
            if self._need_sep:
                raise _syntax("Missing space before literal")
            self._count_token()  # counted now so that add_literal() cannot fail

    def add_literal(self, value: bytes | LiteralRef) -> None:
        """Append the literal announced by the last ``feed()``; never raises."""
        self._stack[-1].append(value)
        self._need_sep = True

    def finish(self) -> tuple[Token, ...]:
        """Return the argument tuple; raise if a list is still open."""
        if len(self._stack) > 1:
            raise _syntax("Missing ')'")
        return tuple(self._stack[0])

    def _count_token(self) -> None:
        self._count += 1
        if self._count > self._max_args:
            raise ProtocolError("too_many_args", "Too many arguments")

    def _append(self, value: Token) -> None:
        self._count_token()
        self._stack[-1].append(value)
        self._need_sep = True

    def _open_list(self) -> None:
        if len(self._stack) > self._max_depth:
            raise ProtocolError("too_deep", "Too deeply nested")
        self._count_token()
        self._stack.append([])
        self._need_sep = False

    def _close_list(self) -> None:
        if len(self._stack) == 1:
            raise _syntax("Unexpected ')'")
        items = tuple(self._stack.pop())
        self._stack[-1].append(items)
        self._need_sep = True
