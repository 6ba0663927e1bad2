"""Cross-replica change feed of the PostgreSQL store: LISTEN/NOTIFY, then the change log.

Theory of operation
-------------------
Every transaction that changes messages logs one `changes` row per UID, tagged with the writing
store's `origin` (a random token per process), and calls `pg_notify(CHANNEL,
"origin:account:mailbox:modseq")`; PostgreSQL delivers that to every listener when, and only if,
the transaction commits.

`follow_changes(deliver)` keeps one dedicated connection (autocommit, outside the pool) in
`LISTEN`. It waits for the socket in trio (`wait_readable`: no thread, no polling, cancellable),
reads the pending notifications with libpq's non-blocking calls, and for every mailbox named by
a notification from ANOTHER origin reads the change log past the MODSEQ it last delivered for
that mailbox (`_last`). So the payload is only a wake-up: what is delivered always comes from the
log, in MODSEQ order, and a notification that is lost, coalesced or late loses nothing.

Gaps: when the connection fails (database restart, network), it reconnects with a bounded
backoff and, once listening again, compares every mailbox's HIGHESTMODSEQ with `_last` and
reads what it missed ("catch-up"). The same catch-up also runs every `CATCHUP_INTERVAL_S` while
connected, a cheap guard against anything unforeseen. At the first connection `_last` starts at
the current HIGHESTMODSEQs: the feed delivers changes made after the process started.

Own changes are skipped (the gateway already published them in-process), but still advance
`_last`. A mailbox deleted elsewhere simply stops appearing; its sessions see it at their next
command.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import psycopg
import trio

from .. import logs
from ._pg_messages import CHANNEL
from ._pg_schema import CONNECT_TIMEOUT_S, one_line, redact
from .base import Change, ChangeKind

__all__ = ["ChangeFollower", "Deliver", "CATCHUP_INTERVAL_S"]

CATCHUP_INTERVAL_S = 30.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0
MAX_CHANGES_PER_READ = 10_000     # one mailbox's backlog is read in slices of this many rows

# deliver(account_id, mailbox_id, changes): called in MODSEQ order per mailbox, never concurrently.
Deliver = Callable[[int, int, list[Change]], Awaitable[None]]
Conn = psycopg.Connection[Any]


class ChangeFollower:
    """See the module docstring. `run_sync` runs SQL on the store's pool (one transaction)."""

    def __init__(self, url: str, password: str | None, origin: str,
                 run_sync: Callable[..., Awaitable[Any]], deliver: Deliver):
        self._url, self._password, self._origin = url, password, origin
        self._run, self._deliver = run_sync, deliver
        self._last: dict[int, int] = {}        # mailbox id -> highest MODSEQ delivered
        self._started = False
        self._reported = False
        self.connected = trio.Event()          # set while LISTEN is active (tests, health)

    def _connect(self) -> Conn:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                  "application_name": "mailproxy-listen"}
        if self._password is not None:
            kwargs["password"] = self._password
        conn = psycopg.connect(self._url, **kwargs)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow changes until cancelled; never returns otherwise. Started (`nursery.start`)
        once listening for the first time."""
        delay = RECONNECT_MIN_S
        while True:
            conn: Conn | None = None
            try:
                conn = await trio.to_thread.run_sync(self._connect)
                await self._catch_up()
                self.connected.set()
                if not self._reported:
                    self._reported = True
                    task_status.started()
                delay = RECONNECT_MIN_S
                await self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                logs.event("store_feed_lost", logging.WARNING, store=redact(self._url),
                           error=logs.sanitize(one_line(exc)), retry_in=round(delay, 1))
            finally:
                if self.connected.is_set():
                    self.connected = trio.Event()
                if conn is not None:
                    conn.close()
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listen(self, conn: Conn) -> None:
        pgconn = conn.pgconn
        while True:
            with trio.move_on_after(CATCHUP_INTERVAL_S) as idle:
                await trio.lowlevel.wait_readable(pgconn.socket)
            if idle.cancelled_caught:
                await self._catch_up()
                continue
            pgconn.consume_input()     # raises psycopg.OperationalError when the server is gone
            wanted: set[int] = set()
            while (note := pgconn.notifies()) is not None:
                origin, _, rest = note.extra.decode().partition(":")
                if origin != self._origin:
                    wanted.add(int(rest.split(":")[1]))
            for mailbox_id in sorted(wanted):
                await self._read(mailbox_id)

    async def _catch_up(self) -> None:
        rows = await self._run(lambda c: c.execute(
            "SELECT id, highest_modseq FROM mailboxes").fetchall())
        if not self._started:
            self._last = {mailbox_id: modseq for mailbox_id, modseq in rows}
            self._started = True
            return
        for mailbox_id, modseq in rows:
            if modseq > self._last.get(mailbox_id, 0):
                await self._read(mailbox_id)

    async def _read(self, mailbox_id: int) -> None:
        while True:
            since = self._last.get(mailbox_id, 0)
            rows = await self._run(lambda c, since=since: c.execute(
                "SELECT account_id, modseq, kind, uid, origin FROM changes "
                "WHERE mailbox_id = %s AND modseq > %s ORDER BY modseq, id LIMIT %s",
                (mailbox_id, since, MAX_CHANGES_PER_READ)).fetchall())
            if not rows:
                return
            full = len(rows) == MAX_CHANGES_PER_READ
            if full and rows[0][1] != rows[-1][1]:      # never split one MODSEQ between slices
                rows = [row for row in rows if row[1] != rows[-1][1]]
            elif full:                                   # one transaction larger than a slice
                rows = await self._run(lambda c, modseq=rows[0][1]: c.execute(
                    "SELECT account_id, modseq, kind, uid, origin FROM changes "
                    "WHERE mailbox_id = %s AND modseq = %s ORDER BY id",
                    (mailbox_id, modseq)).fetchall())
            self._last[mailbox_id] = rows[-1][1]
            theirs = [Change(modseq, ChangeKind(kind), uid)
                      for _, modseq, kind, uid, origin in rows if origin != self._origin]
            if theirs:
                await self._deliver(rows[0][0], mailbox_id, theirs)
            if not full:
                return
