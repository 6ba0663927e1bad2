"""Text in a charset that the mail itself names (Content-Type's charset, RFC 2047 words).

The name comes from untrusted bytes, and Python's codec registry holds more than the charsets
of mail: "idna" and "undefined" raise UnicodeError whatever the error handler, "punycode" and
the "*unicode-escape" codecs turn text into something else, a NUL in the name raises
ValueError, bytes-to-bytes codecs ("zlib", "rot13") raise LookupError. Such names are read as
an unknown charset is: as UTF-8 with U+FFFD for invalid sequences (Dovecot's iconv does not
know them either, and SEARCH then matches the text as UTF-8). So no message can make
decoding fail.
"""

from __future__ import annotations

import codecs

__all__ = ["decode_text"]

# Python codecs that are no mail charset (names as `codecs.lookup` spells them)
NOT_MAIL_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape",
                               "raw-unicode-escape"})


def decode_text(data: bytes, charset: str | None) -> str:
    """`data` decoded from `charset` (US-ASCII and none: UTF-8), never raising."""
    name = charset or "utf-8"
    if name.lower() in ("us-ascii", "ascii"):
        name = "utf-8"   # undeclared 8-bit text is most often UTF-8; ASCII is a subset
    try:
        if codecs.lookup(name).name in NOT_MAIL_CHARSETS:
            name = "utf-8"
        return data.decode(name, "replace")
    except (LookupError, ValueError):   # UnicodeError is a ValueError
        return data.decode("utf-8", "replace")
