"""A COMMIT whose answer never came back: ask the server whether it happened.

Theory of operation: each store call is one transaction, ended by COMMIT (`postgres.py`). If
the connection is lost while that COMMIT is on the wire (cut by `gateway.store_query_timeout`
when the server froze, `_pg_deadline.py`, or the server restarting), the transaction may or
may not have committed: a frozen server still receives the COMMIT into its socket buffer and
runs it when it resumes. Answering NO then tells the client that a change which happened did
not (a client that retries an APPEND stores the message twice); answering OK could claim a
change that never happened. So:

- `commit()` learns the transaction's id before sending COMMIT
  (`txid_current_if_assigned()`: one round trip more per writing call, through libpq
  directly; NULL when the transaction wrote nothing, and then there is nothing in doubt);
- a connection lost during the COMMIT raises `InDoubt` with that id and the call's result;
- the store then asks `txid_status()` on a fresh connection (`settle`, from `PgCalls._call`)
  until the server says `committed` (the call succeeded: its result is returned) or `aborted`
  (it did not: NO [UNAVAILABLE], exact). Only if the server stays silent until the call's
  deadline is the outcome unknown, and the answer NO [UNAVAILABLE] as before.

The whole call, this doubt included, answers within the one bound the operator named,
`gateway.store_query_timeout`: a writing call's statements and COMMIT are cut after the first
three quarters of it (`SETTLE_SHARE`), and a COMMIT cut then is settled within the last quarter
(30 s by default: cut after 22.5 s, settled within 7.5 s more). A reading call has no COMMIT to
doubt and keeps the whole bound. (Before, the doubt had a bound of its own, as long again: a cut
COMMIT could take twice the named limit.)

A call cut before its COMMIT was sent is not in doubt: the server rolls back the transaction
of a client whose connection has closed. The id is a 64-bit txid (epoch and xid), so it never
wraps within the few seconds it is kept.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import psycopg
import psycopg_pool
from psycopg import pq

from .. import logs
from ._pg_deadline import Watch
from .base import StoreUnavailable

__all__ = ["SETTLE_SHARE", "InDoubt", "commit", "outcome", "settle"]

SETTLE_POLL_S = 0.05   # how often the server is asked again while it has no outcome to give
SETTLE_SHARE = 0.25    # of store_query_timeout, kept by a writing call for settling its COMMIT

Conn = psycopg.Connection[Any]


class InDoubt(Exception):
    """The connection was lost while the COMMIT of transaction `xid` was on the wire."""

    def __init__(self, xid: int, result: Any):
        super().__init__(f"COMMIT of transaction {xid} unanswered")
        self.xid = xid
        self.result = result


def commit(c: Conn, result: Any) -> Any:
    """COMMIT `c`'s transaction and return `result` (the call's). Raises InDoubt when the
    connection is lost during the COMMIT of a transaction that wrote something."""
    # libpq directly: the same round trip as through a cursor, for a third of the CPU
    answer = c.pgconn.exec_(b"SELECT txid_current_if_assigned()")
    if answer.status != pq.ExecStatus.TUPLES_OK:   # the connection lost: COMMIT never sent
        raise psycopg.OperationalError(
            answer.error_message.decode("utf-8", "replace") or "connection lost")
    value = answer.get_value(0, 0)
    xid = None if value is None else int(value)
    try:
        c.commit()
    except psycopg.OperationalError as exc:
        # a serialization failure or deadlock at COMMIT leaves the connection usable: rolled
        # back for sure, and retried by the caller
        if xid is not None and c.broken:
            raise InDoubt(xid, result) from exc
        raise
    return result


def outcome(c: Conn, xid: int) -> str | None:
    """'committed', 'aborted' or 'in progress' (the server has not yet read the COMMIT or the
    closed connection), or None (an id too old for the server to remember)."""
    row = c.execute("SELECT txid_status(%s)", (xid,)).fetchone()
    return None if row is None else row[0]


def settle(doubt: InDoubt, ask: Callable[[], str | None], watch: Watch) -> Any:
    """The result of the call in `doubt` once `ask()` (`outcome` on a fresh connection) says its
    COMMIT happened; StoreUnavailable when it did not, or when no answer comes before
    `watch`'s deadline."""
    logs.event("store_commit_in_doubt", logging.WARNING, txid=doubt.xid)
    while True:
        try:
            state = ask()
        except (psycopg.Error, psycopg_pool.PoolTimeout):   # the server is not back yet
            state = None
        if state == "committed":
            logs.event("store_commit_settled", txid=doubt.xid, outcome="committed")
            return doubt.result
        if state == "aborted":
            logs.event("store_commit_settled", txid=doubt.xid, outcome="aborted")
            raise StoreUnavailable("store unavailable: the database lost the connection and "
                                   "rolled the change back") from doubt
        if watch.expired or time.monotonic() + SETTLE_POLL_S >= watch.deadline:
            logs.event("store_commit_settled", logging.WARNING, txid=doubt.xid,
                       outcome="unknown")
            raise StoreUnavailable("store unavailable: the database did not say whether the "
                                   "change was made") from doubt
        time.sleep(SETTLE_POLL_S)   # 'in progress': the COMMIT or the lost connection unread
