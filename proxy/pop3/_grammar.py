"""POP3 line grammar: command lines, status lines, and which commands
answer with a multi-line body.  Pure functions over one line (no CRLF)."""

from __future__ import annotations

import re

from ._util import bad_response, bad_syntax
from .events import Command, Continuation, StatusLine

__all__ = ["parse_command_line", "parse_response_line", "is_multiline", "PLAIN_COMMAND",
           "MULTILINE_ALWAYS", "MULTILINE_WITHOUT_ARGS", "MAX_KEYWORD"]

#: RFC 1939 §3 keywords are 3-4 characters; we accept longer vendor
#: extensions (e.g. XCLIENT) and leave unknown keywords to the relay.
MAX_KEYWORD = 40

# RFC 2449 §8: resp-code = "[" resp-level *("/" resp-level) "]"
#              resp-level = 1*<any CHAR except CTLs, SPACE, "/", "[", "]">
_RESP_CODE = re.compile(rb"\[([\x21-\x2e\x30-\x5a\x5c\x5e-\x7e]+(?:/[\x21-\x2e\x30-\x5a\x5c\x5e-\x7e]+)*)\]")

# RFC 1939 §3 always multi-line; RFC 2449 §5 CAPA is multi-line too.
MULTILINE_ALWAYS = frozenset({b"RETR", b"TOP", b"CAPA"})
# RFC 1939 §5 LIST / §7 UIDL: the scan listing (no argument) is multi-line,
# "AUTH" alone lists mechanisms (RFC 1734 practice, multi-line).
MULTILINE_WITHOUT_ARGS = frozenset({b"LIST", b"UIDL", b"AUTH"})


def is_multiline(name: bytes, args: tuple[bytes, ...]) -> bool:
    """Whether a ``+OK`` answer to this command carries a multi-line body.

    A ``-ERR`` answer is always single-line (RFC 1939 §3).
    """
    name = name.upper()
    if name in MULTILINE_ALWAYS:
        return True
    return name in MULTILINE_WITHOUT_ARGS and not args


# One whole line that parse_command_line reads as it is (the relay's common chunk): a
# transaction command (RFC 1939 5, 7) in upper case, as clients send them, with numeric
# arguments, and CRLF (other spellings take the parser: the same Command, a few calls more;
# CommandParser.plain_line reads it).
PLAIN_COMMAND = re.compile(rb"(STAT|LIST|RETR|DELE|NOOP|RSET|QUIT|TOP|UIDL)"
                           rb"((?: [0-9]{1,10}){0,2})\r\n")


def parse_command_line(line: bytes) -> Command:
    """Parse a client command line (terminator already stripped).

    Raises:
        ProtocolError: kind "bad_syntax" (non-fatal).
    """
    # RFC 1939 §3: a keyword, then arguments separated by single spaces.
    # NUL and bare CR are refused: forwarded, they could split the line
    # differently upstream.
    if not line or b"\0" in line or b"\r" in line:
        raise bad_syntax()
    name, sep, rest = line.partition(b" ")
    if not (len(name) <= MAX_KEYWORD and name.isalnum()):
        raise bad_syntax()
    name = name.upper()
    if name == b"PASS":
        # RFC 1939 §7: "the server may treat spaces in the argument as part
        # of the password, instead of as argument separators".
        return Command(name, (rest,) if sep else (), line)
    # Trailing spaces are tolerated ("LIST " is LIST without argument, as
    # Dovecot reads it); an empty argument inside the line is not.
    rest = rest.rstrip(b" ")
    args = tuple(rest.split(b" ")) if rest else ()
    if b"" in args:
        raise bad_syntax()
    return Command(name, args, line)


def parse_response_line(line: bytes) -> StatusLine | Continuation:
    """Parse a server status or continuation line (terminator stripped).

    Raises:
        ProtocolError: kind "bad_response" (fatal).
    """
    # RFC 1939 §3: "+OK" / "-ERR", then optionally a space and text.
    # Servers send them upper-case; we accept any case.
    head = line[:4].upper()
    if head[:3] == b"+OK" and line[3:4] in (b"", b" "):
        return _status(True, line[4:])
    if head == b"-ERR" and line[4:5] in (b"", b" "):
        return _status(False, line[5:])
    # RFC 5034 §4: a server challenge is "+" SP base64; some servers send "+" alone.
    if line[:1] == b"+" and line[1:2] in (b"", b" "):
        return Continuation(line[2:])
    raise bad_response()


def _status(ok: bool, rest: bytes) -> StatusLine:
    # RFC 2449 §8: an extended response code in brackets follows the
    # indicator.  A malformed one is left in the text.
    match = _RESP_CODE.match(rest)
    if match is None:
        return StatusLine(ok, None, rest)
    text = rest[match.end() :]
    return StatusLine(ok, match.group(1), text[1:] if text[:1] == b" " else text)
