"""Mailbox names on the wire: modified UTF-7 by default (RFC 3501 5.1.3), UTF-8 once the client
has enabled UTF8=ACCEPT (RFC 6855 3) or IMAP4rev2 (RFC 9051 5.1, which includes it).

The store keeps one form whatever the client speaks: the name as Python `str` (Unicode code
points). Both wire forms map to it one-to-one, so a folder created as "&AOQ-" by one device is
the folder created as "ä" by another. After ENABLE, "&" is an ordinary character (RFC 6855 3:
no modified UTF-7 any more) and names go out as quoted strings holding UTF-8 (RFC 6855 3,
`uQUOTED-CHAR`), never as literals unless they hold CR, LF or NUL.

Names are kept as sent, not normalised: RFC 6855 3 asks for Net-Unicode (RFC 5198 2), whose
NFC is a SHOULD for the sender, and Dovecot does not normalise either, so "Café" in NFC and in
NFD are two mailboxes (normalising input would also strand a folder an older client created
in NFD through modified UTF-7).
"""

from __future__ import annotations

import re

from ...imap import writer
from . import utf7

UTF8_ACCEPT = b"UTF8=ACCEPT"
IMAP4REV2 = b"IMAP4REV2"   # as ENABLE keeps it (upper case)

# RFC 6855 3: names MUST NOT contain C0/C1 controls, DEL, LINE SEPARATOR, PARAGRAPH SEPARATOR.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNQUOTABLE = re.compile(rb"[\x00\r\n]")


class BadName(ValueError):
    """Bytes that are not a valid mailbox name in the session's naming."""


def utf8_enabled(enabled: set[bytes]) -> bool:
    """UTF-8 names for a session that has ENABLEd these (RFC 6855 3, RFC 9051 5.1)."""
    return UTF8_ACCEPT in enabled or IMAP4REV2 in enabled


def decode(raw: bytes, utf8: bool) -> str:
    """A wire name (or LIST pattern) as stored text. Raises BadName."""
    if not utf8:
        try:
            return utf7.decode(raw)
        except utf7.Utf7Error as exc:
            raise BadName(str(exc)) from None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName("mailbox name is not UTF-8") from None
    if _FORBIDDEN.search(name):
        raise BadName("control character in mailbox name")
    return name


def wire(name: str, utf8: bool) -> bytes:
    """A stored name as sent: astring of its modified UTF-7 form, or UTF-8 quoted."""
    if name == "":
        return b'""'
    if not utf8:
        return writer.astring(utf7.encode(name))
    raw = name.encode("utf-8")
    if raw.isascii() or _UNQUOTABLE.search(raw):
        return writer.astring(raw)
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
