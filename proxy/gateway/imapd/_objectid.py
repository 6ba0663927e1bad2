"""OBJECTID (RFC 8474): MAILBOXID, EMAILID and THREADID.

The ids are the store's row ids with a letter in front: a mailbox's id (kept by RENAME: the row
is renamed in place), a message's body id (shared by its COPY/MOVE copies within the account, as
4.1 suggests; a new APPEND of the same bytes is a new body, which 4.1 allows). Both are never
reused (AUTOINCREMENT, PostgreSQL sequences) and `gateway migrate` copies rows with their ids,
so ids stay the same from SQLite to PostgreSQL. THREADID is NIL: the gateway keeps no thread
of a message (5.2 allows NIL), so SEARCH THREADID matches nothing.
"""

from __future__ import annotations

import re

_OBJECTID = re.compile(rb"^[A-Za-z0-9_-]{1,255}$")   # 8474 7: objectid = 1*255(ALPHA / DIGIT / "_" / "-")


def mailbox_id(row_id: int) -> bytes:
    return b"M%d" % row_id


def email_id(body_id: int) -> bytes:
    return b"E%d" % body_id


def valid(value: bytes) -> bool:
    return _OBJECTID.match(value) is not None
