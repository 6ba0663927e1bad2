"""Named size limits for the IMAP parsers (STYLE.md §7.6).

The parser enforces every limit while framing or tokenising, so that no input
can make it buffer more than about ``max_line`` bytes (plus, when literals are
collected, ``max_literal`` bytes) at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "DEFAULT_LIMITS", "PREAUTH_LIMITS"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits applied by :class:`CommandParser` and :class:`ResponseParser`.

    Attributes:
        max_line: bytes in one line part, CRLF and literal payloads excluded.
        max_literal: bytes in one literal (``{n}``, ``{n+}``, ``~{n}``); when
            literals are collected, also in all the literals of one command.
        max_nonsync_literal: bytes in one non-synchronising ``{n+}`` literal
            sent by a client.  4096 is the RFC 7888 §4 LITERAL- bound; set it
            to ``max_literal`` when LITERAL+ was advertised.
        max_depth: parenthesis nesting depth (checked only with ``parse_args``).
        max_args: tokens, lists included, in one command or response (checked
            only with ``parse_args``).
        max_id_line: bytes in a line part of an ID command, when larger than
            ``max_line``: RFC 2971 3.3 allows 30 field/value pairs with values
            of 1024 octets, about 32 KB on one line, even before login, while
            every other command keeps ``max_line``.  0: ``max_line``.
    """

    max_line: int = 65536
    max_literal: int = 64 * 1024 * 1024
    max_nonsync_literal: int = 4096
    max_depth: int = 16
    max_args: int = 10000
    max_id_line: int = 0


#: The defaults above, shared by every parser created without explicit limits.
DEFAULT_LIMITS = Limits()

#: Limits before authentication (compare Dovecot's IMAP_LOGIN_MAX_LINE_LENGTH
#: and IMAP_LOGIN_LIST_COUNT_LIMIT).  128 tokens leave room for RFC 2971 ID's
#: 30 field/value pairs.
PREAUTH_LIMITS = Limits(
    max_line=8192,
    max_literal=8192,
    max_nonsync_literal=4096,
    max_depth=2,
    max_args=128,
)
