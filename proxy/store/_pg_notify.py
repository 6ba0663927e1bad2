"""Cross-replica change feed of the PostgreSQL store: LISTEN/NOTIFY, then the change log.

Theory of operation
-------------------
Every transaction that changes messages logs one `changes` row per UID, tagged with the writing
store's `origin` (a random token per process), and calls `pg_notify(CHANNEL,
"origin:account:mailbox:modseq")`; PostgreSQL delivers that to every listener when, and only if,
the transaction commits. DELETE and RENAME notify `origin:account:mailbox:gone` instead.

`follow_changes(feed)` keeps one dedicated connection (autocommit, outside the pool) in
`LISTEN`. It waits for the socket in trio (`wait_readable`: no thread, no polling, cancellable),
reads the pending notifications with libpq's non-blocking calls, and for every mailbox named by
a notification from ANOTHER origin reads the change log past the MODSEQ it last delivered for
that mailbox (`_last`): ONE read per mailbox per wake-up, whatever the number of sessions, with
the current flags of the messages whose flags changed joined in, handed to `feed.changed` (the
gateway publishes it on the account's hub). So the payload is only a wake-up: what is
delivered always comes from the log, in MODSEQ order, and a notification that is lost,
coalesced or late loses nothing. A `gone` notification is handed to `feed.gone` (the
sessions that have that mailbox selected are disconnected, as Dovecot does).

Gaps: when the connection fails (database restart, network), it reconnects with a bounded
backoff and, once listening again, compares every mailbox's HIGHESTMODSEQ with `_last` and
reads what it missed ("catch-up"). A mailbox that disappeared, or whose name is not the one
the last catch-up saw (`_names`), is reported gone: a missed RENAME is caught up like a missed
DELETE. Names this process gave by its own RENAME (`renamed_here`, told by the store before
the call returns) are taken silently, so a gap never turns one's own rename into a BYE. The same
catch-up also runs every `CATCHUP_INTERVAL_S` while connected, a cheap guard against anything
unforeseen. At the first connection `_last` starts at the current HIGHESTMODSEQs: the feed
delivers changes made after the process started.

Own changes are not delivered (the gateway already published them in-process) but still advance
`_last`; own EXPUNGEs read from the log are handed to `feed.hold` (views pin the bodies of what
they still show: idempotent, and it makes the acks below independent of when the in-process
publication happens).

Every `timing.ack_interval` (`gateway.store_ack_interval`; and once before the feed counts as
started) the follower acks: it tells the other replicas which expunges its sessions have seen
and which bodies they still show, then sweeps what no live replica needs (`_pg_bodies.py`
explains why this is safe); a replica that has not acked for `timing.lease`
(`gateway.store_replica_lease`) counts as dead.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Protocol

import psycopg
import trio

from .. import logs
from . import _pg_bodies as bodies
from ._pg_messages import CHANNEL, GONE
from ._pg_schema import CONNECT_TIMEOUT_S, one_line, redact
from .base import Change, ChangeKind, StoreError

__all__ = ["ChangeFollower", "Feed", "CATCHUP_INTERVAL_S"]

CATCHUP_INTERVAL_S = 30.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0
MAX_CHANGES_PER_READ = 10_000     # one mailbox's backlog is read in slices of this many rows

Conn = psycopg.Connection[Any]
# the log, with the current flags of messages that have a FLAGS change (LEFT JOIN: gone = NULL)
_READ = ("SELECT c.account_id, c.modseq, c.kind, c.uid, c.origin, m.flags, m.modseq "
         "FROM changes c LEFT JOIN messages m ON c.kind = 'flags' "
         "AND m.mailbox_id = c.mailbox_id AND m.uid = c.uid ")


class Feed(Protocol):
    """What the follower hands changes to (the gateway service); never called concurrently."""

    async def changed(self, account_id: int, mailbox_id: int, changes: list[Change],
                      flags: dict[int, tuple[frozenset[str], int]]) -> None:
        """Another process's changes to one mailbox, in MODSEQ order; `flags`: uid -> the
        current flags and MODSEQ of those with a FLAGS change that still exist (read in the
        same query as the log: no second round trip)."""

    def hold(self, account_id: int, mailbox_id: int, uids: list[int]) -> None:
        """This process's own expunges: sessions pin the bodies of those they still show."""

    def gone(self, account_id: int, mailbox_id: int) -> None:
        """The mailbox was deleted or renamed by another process."""

    def pinned(self) -> set[int]:
        """Body ids the sessions of this process still show (expunged, not yet told)."""


class ChangeFollower:
    """See the module docstring. `run_sync` runs SQL on the store's pool (one transaction)."""

    def __init__(self, url: str, password: str | None, origin: str,
                 run_sync: Callable[..., Awaitable[Any]], feed: Feed,
                 timing: bodies.ReplicaTiming = bodies.DEFAULT_TIMING,
                 connect_options: dict[str, Any] | None = None):
        self._url, self._password, self._origin = url, password, origin
        self._connect_options = connect_options or {}   # TCP keepalive etc. (_pg_deadline.py)
        self._timing = timing
        self._run, self._feed = run_sync, feed
        self._last: dict[int, int] = {}        # mailbox id -> highest MODSEQ delivered
        self._accounts: dict[int, int] = {}    # mailbox id -> account id (seen at a catch-up)
        self._names: dict[int, str] = {}       # mailbox id -> name (seen at a catch-up)
        self._own_names: dict[int, str] = {}   # mailbox id -> name given by this process's RENAME
        self._horizon = 0                      # acked: every xid below it delivered here
        self._started = False
        self._reported = False
        self.connected = trio.Event()          # set while LISTEN is active (tests, health)
        self.acked = 0                         # acks done (tests)
        self.ack_event = trio.Event()          # set (and replaced) after each ack

    def _connect(self) -> Conn:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                  "application_name": "mailproxy-listen", **self._connect_options}
        if self._password is not None:
            kwargs["password"] = self._password
        conn = psycopg.connect(self._url, **kwargs)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow changes until cancelled; never returns otherwise. Started (`nursery.start`)
        once listening and registered as a replica for the first time."""
        delay = RECONNECT_MIN_S
        while True:
            conn: Conn | None = None
            try:
                conn = await trio.to_thread.run_sync(self._connect)
                await self._catch_up()
                await self._ack()
                self.connected.set()
                if not self._reported:
                    self._reported = True
                    task_status.started()
                delay = RECONNECT_MIN_S
                await self._listen(conn)
            except (psycopg.Error, OSError, StoreError) as exc:
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
        now = trio.current_time()
        ack_interval = self._timing.ack_interval
        next_ack, next_catch_up = now + ack_interval, now + CATCHUP_INTERVAL_S
        while True:
            readable = False
            with trio.move_on_at(min(next_ack, next_catch_up)):
                await trio.lowlevel.wait_readable(pgconn.socket)
                readable = True
            if readable:
                pgconn.consume_input()     # raises psycopg.OperationalError when the server is gone
                await self._notified(pgconn)
            now = trio.current_time()
            if now >= next_catch_up:
                await self._catch_up()
                next_catch_up = now + CATCHUP_INTERVAL_S
            if now >= next_ack:
                await self._ack()
                next_ack = trio.current_time() + ack_interval

    async def _notified(self, pgconn: Any) -> None:
        wanted: dict[int, int] = {}        # mailbox -> account, in arrival order
        while (note := pgconn.notifies()) is not None:
            origin, _, rest = note.extra.decode().partition(":")
            if origin == self._origin:
                continue
            account, mailbox, modseq = rest.split(":")
            if modseq == GONE:
                self._forget(int(mailbox))
                self._feed.gone(int(account), int(mailbox))
            else:
                wanted[int(mailbox)] = int(account)
        for mailbox_id in sorted(wanted):
            await self._read(mailbox_id)

    def _forget(self, mailbox_id: int) -> None:
        self._last.pop(mailbox_id, None)
        self._accounts.pop(mailbox_id, None)
        self._names.pop(mailbox_id, None)
        self._own_names.pop(mailbox_id, None)

    def renamed_here(self, names: dict[int, str]) -> None:
        """This process renamed these mailboxes (id -> new name): its own sessions were told
        in-process, so the next catch-up takes the new names without reporting them gone."""
        self._own_names.update(names)

    async def _catch_up(self) -> None:
        rows = await self._run(lambda c: c.execute(
            "SELECT id, account_id, highest_modseq, name FROM mailboxes").fetchall())
        if not self._started:
            self._last = {mailbox_id: modseq for mailbox_id, _, modseq, _ in rows}
            self._accounts = {mailbox_id: account for mailbox_id, account, _, _ in rows}
            self._names = {mailbox_id: name for mailbox_id, _, _, name in rows}
            self._started = True
            return
        present = {mailbox_id for mailbox_id, _, _, _ in rows}
        for mailbox_id, account in list(self._accounts.items()):
            if mailbox_id not in present:   # deleted while the notification was missed
                self._forget(mailbox_id)
                self._feed.gone(account, mailbox_id)
        for mailbox_id, account, modseq, name in rows:
            known = self._names.get(mailbox_id, name)
            if name != known and self._own_names.get(mailbox_id) != name:
                self._forget(mailbox_id)    # renamed while the notification was missed
                self._feed.gone(account, mailbox_id)
                self._last[mailbox_id] = modseq   # a rename is no message change
            elif name == self._own_names.get(mailbox_id):
                del self._own_names[mailbox_id]
            self._accounts[mailbox_id], self._names[mailbox_id] = account, name
            if modseq > self._last.get(mailbox_id, 0):
                await self._read(mailbox_id)

    async def _ack(self) -> None:
        """Deliver every expunge committed below a fresh xmin that could concern a body still
        waiting, then record xmin as this replica's horizon with its pins; then sweep."""
        horizon = self._horizon

        def read(c: Conn) -> tuple[int, list[tuple[int, int, int]]]:
            xmin = bodies.snapshot_xmin(c)          # first: later statements see more
            return xmin, bodies.pending_mailboxes(c, horizon)

        xmin, pending = await self._run(read)
        for mailbox_id, _, modseq in pending:
            if modseq > self._last.get(mailbox_id, 0):
                await self._read(mailbox_id)
        pins = self._feed.pinned()
        await self._run(lambda c: bodies.write_ack(c, self._origin, xmin, pins))
        self._horizon = max(self._horizon, xmin)
        self.acked += 1
        done, self.ack_event = self.ack_event, trio.Event()
        done.set()
        await self._run(lambda c: bodies.sweep(c, self._timing.lease))

    async def _read(self, mailbox_id: int) -> None:
        while True:
            since = self._last.get(mailbox_id, 0)
            rows = await self._run(lambda c, since=since: c.execute(
                _READ + "WHERE c.mailbox_id = %s AND c.modseq > %s ORDER BY c.modseq, c.id "
                "LIMIT %s", (mailbox_id, since, MAX_CHANGES_PER_READ)).fetchall())
            if not rows:
                return
            full = len(rows) == MAX_CHANGES_PER_READ
            if full and rows[0][1] != rows[-1][1]:      # never split one MODSEQ between slices
                rows = [row for row in rows if row[1] != rows[-1][1]]
            elif full:                                   # one transaction larger than a slice
                rows = await self._run(lambda c, modseq=rows[0][1]: c.execute(
                    _READ + "WHERE c.mailbox_id = %s AND c.modseq = %s ORDER BY c.id",
                    (mailbox_id, modseq)).fetchall())
            self._last[mailbox_id] = rows[-1][1]
            account_id = rows[0][0]
            self._accounts[mailbox_id] = account_id
            theirs, own_expunged = [], []
            flags: dict[int, tuple[frozenset[str], int]] = {}
            for _, modseq, kind, uid, origin, now_flags, now_modseq in rows:
                if origin != self._origin:
                    theirs.append(Change(modseq, ChangeKind(kind), uid))
                    if now_flags is not None:
                        flags[uid] = (frozenset(now_flags.split()), now_modseq)
                elif kind == ChangeKind.EXPUNGE.value:
                    own_expunged.append(uid)
            if own_expunged:
                self._feed.hold(account_id, mailbox_id, own_expunged)
            if theirs:
                await self._feed.changed(account_id, mailbox_id, theirs, flags)
            if not full:
                return
