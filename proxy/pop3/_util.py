"""Errors and sentinels shared by the POP3 parsers.

Two rules, after h11 ``_util.py``:

* The parsers raise :class:`ProtocolError` for every problem caused by the
  bytes they were fed, and nothing else.  Any other exception escaping
  ``next_event()`` is a bug in this package.
* :attr:`ProtocolError.text` is a constant chosen by this package; it never
  echoes peer input, so :meth:`ProtocolError.reply` is safe to send.
"""

from __future__ import annotations

import enum

__all__ = [
    "NEED_DATA",
    "KINDS",
    "ProtocolError",
    "line_too_long",
    "bad_syntax",
    "bad_response",
    "unexpected_response",
]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: Returned by ``next_event()`` when more bytes are needed to make progress.
NEED_DATA = _Sentinel.NEED_DATA

#: Every value :attr:`ProtocolError.kind` can take: a bounded metrics label.
KINDS = frozenset({"line_too_long", "bad_syntax", "bad_response", "unexpected_response"})

#: RFC 3206 §4 SYS/TEMP: the upstream misbehaved, a retry may reach a sane one.
_UPSTREAM_CODE = b"SYS/TEMP"


class ProtocolError(Exception):
    """The peer sent bytes that break the POP3 grammar or our limits.

    Attributes:
        kind: one of :data:`KINDS`, for metrics and logs.
        text: a constant, ASCII, safe-to-send description.
        fatal: ``False`` when the parser has resynchronised (it skips to
            the next line) and the connection may continue; ``True`` when
            framing is lost and the connection must be closed.  A fatal
            error is raised again by every later ``next_event()``.
        code: an RFC 2449 §8 / RFC 3206 response code for the reply, or None.
    """

    def __init__(self, kind: str, text: str, *, fatal: bool, code: bytes | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown ProtocolError kind {kind!r}")
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.fatal = fatal
        self.code = code

    def reply(self) -> bytes:
        """The ``-ERR`` line to send to the client, e.g. ``b"-ERR Line too long\\r\\n"``."""
        code = b"[" + self.code + b"] " if self.code else b""
        return b"-ERR " + code + self.text.encode("ascii") + b"\r\n"

    def __repr__(self) -> str:
        return f"ProtocolError(kind={self.kind!r}, text={self.text!r}, fatal={self.fatal!r})"


def line_too_long(*, fatal: bool) -> ProtocolError:
    code = _UPSTREAM_CODE if fatal else None
    return ProtocolError("line_too_long", "Line too long", fatal=fatal, code=code)


def bad_syntax() -> ProtocolError:
    return ProtocolError("bad_syntax", "Syntax error", fatal=False)


def bad_response() -> ProtocolError:
    return ProtocolError("bad_response", "Bad response from server", fatal=True, code=_UPSTREAM_CODE)


def unexpected_response() -> ProtocolError:
    return ProtocolError(
        "unexpected_response", "Unexpected response from server", fatal=True, code=_UPSTREAM_CODE
    )
