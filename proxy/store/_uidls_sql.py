"""SQL on the `uidls` rows that both stores share (placeholder `{p}`: "?" or "%s").

A row is one POP3 UIDL the gateway fetched for an account: when (`fetched_at`), whether a DELE
of it took effect or a listing went without it (`deleted_upstream_at`), and the content digest
of the message it named (`digest`, schema step 9; `gateway/sync_identity.py`)."""

from __future__ import annotations

from ._rows import META_SELECT

__all__ = ["REUSE_UIDL", "RECORD_UIDL", "SET_DIGEST", "UIDL_MESSAGES", "UIDL_ROWS"]

# Each UIDL the account has: its fetched_at, or NULL when it is gone upstream.
UIDL_ROWS = ("SELECT uidl, CASE WHEN deleted_upstream_at IS NULL THEN fetched_at END "
             "FROM uidls WHERE account_id = {p}")

# New mail under a UIDL gone upstream (RFC 1939 7 lets a server give it out again): the row now
# names the new message. Only a row gone upstream: two syncs never both take it.
REUSE_UIDL = ("UPDATE uidls SET fetched_at = {p}, deleted_upstream_at = NULL, digest = {p} "
              "WHERE account_id = {p} AND uidl = {p} AND deleted_upstream_at IS NOT NULL")

# A stored message's UIDL, listed upstream now: renamed (a new row) or listed again on the same
# message (its row upstream again).
RECORD_UIDL = ("INSERT INTO uidls(account_id, uidl, fetched_at, digest) VALUES ({p}, {p}, {p}, {p}) "
               "ON CONFLICT (account_id, uidl) DO UPDATE SET deleted_upstream_at = NULL, "
               "fetched_at = excluded.fetched_at, digest = excluded.digest")

# A digest taken later (`sync_identity`: a row of before schema step 9), never over one taken
# at ingest.
SET_DIGEST = "UPDATE uidls SET digest = {p} WHERE account_id = {p} AND uidl = {p} AND digest IS NULL"

# The account's ingested messages (each keeps its UIDL, copies too), oldest first.
UIDL_MESSAGES = (META_SELECT + "JOIN mailboxes mb ON mb.id = m.mailbox_id "
                 "WHERE mb.account_id = {p} AND m.pop3_uidl IS NOT NULL ")
