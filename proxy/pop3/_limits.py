"""Size limits enforced by the POP3 parsers.

Line lengths count the terminating CRLF, as RFC 2449 §4 does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "PREAUTH_LIMITS", "DEFAULT_LIMITS"]

_MIN_LINE = 8


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection parser limits.

    Attributes:
        max_command_line: longest client line (command or SASL response),
            CRLF included.  RFC 2449 §4 caps commands at 255 octets, but an
            RFC 5034 §4 AUTH initial response or SASL continuation (e.g. a
            GSSAPI token in base64) is far longer, so we accept up to 8192.
        max_response_line: longest server status/continuation line, CRLF
            included.  RFC 2449 §4 says 512 octets; servers put long texts
            and SASL challenges there, so we are lenient.  Lines inside a
            multi-line body are never length-checked: they are not parsed.
    """

    max_command_line: int = 8192
    max_response_line: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_command_line", "max_response_line"):
            if getattr(self, name) < _MIN_LINE:
                raise ValueError(f"{name} must be at least {_MIN_LINE}")


DEFAULT_LIMITS = Limits()

#: Tighter limits for the AUTHORIZATION state (before the client logged in).
PREAUTH_LIMITS = Limits(max_command_line=2048)
