"""OBJECTID (RFC 8474): MAILBOXID, EMAILID and THREADID.

Each id is a keyed hash of a store row id: a mailbox's id (kept by RENAME: the row is renamed
in place), a message's body id (shared by its COPY/MOVE copies within the account, as 4.1
suggests; a new APPEND of the same bytes is a new body, which 4.1 allows). Row ids are never
reused (AUTOINCREMENT, PostgreSQL sequences), so ids are never reused either.

RFC 8474 7 (security): ids must not reveal anything, such as how many mailboxes or messages
the server holds or in what order they were made, as the bare row ids (`M17`) did. The hash is
BLAKE2b keyed with the store's own random secret (`Store.objectid_key`, made by schema step 8,
kept in the store's `meta` table and copied by `gateway migrate`, so ids stay the same from
SQLite to PostgreSQL); 120 bits of it, base64url, behind a letter for the kind: 21 characters.
THREADID is NIL: the gateway keeps no thread of a message (5.2 allows NIL), so SEARCH THREADID
matches nothing.
"""

from __future__ import annotations

import base64
import hashlib

# 8474 7: objectid = 1*255(ALPHA / DIGIT / "_" / "-"): base64url without padding fits
DIGEST_BYTES = 15    # 120 bits: a multiple of 3, so base64 needs no padding


class ObjectIds:
    """The ids of one store (its `objectid_key`)."""

    def __init__(self, key: bytes):
        if not 16 <= len(key) <= hashlib.blake2b.MAX_KEY_SIZE:
            raise ValueError("objectid key must be 16 to 64 bytes")
        self._key = key

    def _id(self, kind: bytes, row_id: int) -> bytes:
        digest = hashlib.blake2b(kind + b"%d" % row_id, key=self._key,
                                 digest_size=DIGEST_BYTES).digest()
        return kind + base64.urlsafe_b64encode(digest)

    def mailbox(self, row_id: int) -> bytes:
        return self._id(b"M", row_id)

    def email(self, body_id: int) -> bytes:
        return self._id(b"E", body_id)
