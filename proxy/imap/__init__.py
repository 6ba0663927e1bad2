"""Sans-IO IMAP core: parsers, events and writers (no trio, socket or ssl).

Public API::

    from proxy.imap import (CommandParser, ResponseParser, Limits, PREAUTH_LIMITS,
                            NEED_DATA, ProtocolError, Atom, LiteralRef, events, writer)
"""

from . import events, writer
from ._command_parser import CommandParser
from ._errors import ProtocolError
from ._limits import PREAUTH_LIMITS, Limits
from ._parser import NEED_DATA
from ._response_parser import ResponseParser
from ._tokens import Atom, LiteralRef

__all__ = [
    "CommandParser",
    "ResponseParser",
    "Limits",
    "PREAUTH_LIMITS",
    "NEED_DATA",
    "ProtocolError",
    "Atom",
    "LiteralRef",
    "events",
    "writer",
]
