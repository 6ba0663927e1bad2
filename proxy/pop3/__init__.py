"""Sans-IO POP3: bytes in, events out; no trio, socket or ssl here.

Protocol references: RFC 1939 (POP3), RFC 2449 (CAPA, PIPELINING,
RESP-CODES), RFC 3206 (SYS and AUTH response codes), RFC 5034 (AUTH/SASL).

* :class:`CommandParser`: server side, client bytes → Command / RawLine.
* :class:`ResponseParser`: client side, server bytes → StatusLine,
  Continuation, MultilineData/MultilineEnd (see ``_body`` for the fast
  terminator search).
* :mod:`.writer`: events' wire form, dot-stuffing.
"""

from . import events, writer
from ._command_parser import CommandParser
from ._grammar import MULTILINE_ALWAYS, MULTILINE_WITHOUT_ARGS, is_multiline
from ._limits import PREAUTH_LIMITS, Limits
from ._response_parser import ResponseParser
from ._util import NEED_DATA, ProtocolError

__all__ = [
    "CommandParser",
    "ResponseParser",
    "Limits",
    "PREAUTH_LIMITS",
    "NEED_DATA",
    "ProtocolError",
    "events",
    "writer",
    "is_multiline",
    "MULTILINE_ALWAYS",
    "MULTILINE_WITHOUT_ARGS",
]
