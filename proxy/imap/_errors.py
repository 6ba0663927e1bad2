"""The one exception the IMAP parsers raise on bad input.

Any other exception escaping ``next_event()`` is a bug in this package.
Error texts are fixed strings: they never echo peer data, so ``reply()`` is
always safe to send.
"""

from __future__ import annotations

__all__ = ["ProtocolError"]

# Bounded metric labels (the ``kind`` attribute).
KINDS = frozenset(
    {
        "line_too_long",
        "literal_too_big",
        "nonsync_literal_too_big",
        "bad_syntax",
        "too_deep",
        "too_many_args",
    }
)

# Response codes: TOOBIG (RFC 4469 §5, used by RFC 7888 §4 for LITERAL-);
# CLIENTBUG and LIMIT (RFC 5530 §3).
_DEFAULT_CODES = {
    "line_too_long": b"TOOBIG",
    "literal_too_big": b"TOOBIG",
    "nonsync_literal_too_big": b"TOOBIG",
    "bad_syntax": b"CLIENTBUG",
    "too_deep": b"LIMIT",
    "too_many_args": b"LIMIT",
}


class ProtocolError(Exception):
    """The peer sent something the parser cannot accept.

    Attributes:
        reply_status: ``b"BAD"``, ``b"NO"`` or ``b"BYE"`` (BYE iff ``fatal``).
        code: response code for the reply, e.g. ``b"TOOBIG"``, or None.
        text: short fixed text, safe to send.
        tag: the command tag when known (the reply is then tagged), else None.
        fatal: True when the stream cannot be resynchronised; the caller
            should send ``reply()`` (an untagged BYE) and close.  Otherwise the
            parser has already resynchronised and ``next_event()`` may be
            called again.
        kind: bounded label for metrics, one of ``KINDS``.
    """

    def __init__(
        self,
        kind: str,
        text: str,
        *,
        tag: bytes | None = None,
        fatal: bool = False,
        code: bytes | None = None,
    ) -> None:
        assert kind in KINDS, kind
        super().__init__(kind, text)
        self.kind = kind
        self.text = text
        self.tag = tag
        self.fatal = fatal
        self.code = code if code is not None else _DEFAULT_CODES[kind]
        self.reply_status = b"BYE" if fatal else b"BAD"

    def with_context(self, *, tag: bytes | None, fatal: bool) -> ProtocolError:
        """Return a copy carrying the command tag and the fatal flag."""
        return ProtocolError(self.kind, self.text, tag=tag, fatal=fatal, code=self.code)

    def reply(self) -> bytes:
        """The full reply line, e.g. ``b"A1 BAD [TOOBIG] Literal too big\\r\\n"``.

        BYE (RFC 3501 §7.1.5) is always untagged; BAD is tagged when the tag
        is known (RFC 3501 §7.1.3).
        """
        prefix = self.tag if self.tag is not None and self.reply_status != b"BYE" else b"*"
        code = b"[" + self.code + b"] " if self.code else b""
        return b"%s %s %s%s\r\n" % (prefix, self.reply_status, code, self.text.encode("ascii"))

    def __repr__(self) -> str:
        return (
            f"ProtocolError(kind={self.kind!r}, text={self.text!r}, tag={self.tag!r}, "
            f"fatal={self.fatal!r})"
        )
