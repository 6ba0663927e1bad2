"""Bodies of expunged messages on PostgreSQL: when may one be deleted, with several replicas?

Theory of operation
-------------------
A message removed by EXPUNGE, MOVE or DELETE leaves its body in place: a session that has not
been sent the EXPUNGE yet may still FETCH it (RFC 2180 4.1.1), and that session may live in any
process (replica) on the database. Each process knows its own sessions (the hub's *pins*); this
module makes the processes agree, with three tables (schema v2, `_pg_schema.py`):

* `orphans(body_id, xid)`: written by the transaction that removed a message (`note_orphans`),
  with that transaction's id. A body shared by copies gets a row each time a copy goes; the row
  is only a candidate: the sweep checks that no message refers to the body any more.
* `replicas(origin, seen_at, horizon)`: one row per gateway process following the change feed.
  `horizon` H means: every transaction with an xid below H has finished, and every expunge it
  made has been delivered to this process's sessions, which pinned what they still show.
  `seen_at` is a lease renewed by each ack; a replica not seen for `ReplicaTiming.lease` is dead
  (SIGKILL, lost node): its row and pins are dropped by the next sweep.
* `pins(origin, body_id)`: the bodies that process's sessions still show, as of its last ack.

A body is deleted (`sweep`) once its orphan row's xid is below the horizon of every live
replica, no live replica pins it, and no message refers to it. So a body is never deleted while
a live session anywhere may still read it, and bodies left by a dead process are swept anyway.

Why transaction ids and not MODSEQs or times: commits do not happen in id (or clock) order, so
"I have seen everything up to N" is only true of the snapshot's *xmin*: every transaction below
it has finished, committed or not. An ack (`ChangeFollower._ack`) therefore (1) reads xmin in
one statement, (2) in later statements (newer snapshots) reads the change log of every mailbox
of the accounts with orphans past its horizon and delivers it (others' expunges as events, its
own as holds: a view pins what it still shows), (3) writes xmin as its horizon together with the
process's current pins. A replica that starts registers before it serves anything: its sessions'
first snapshots are newer than that horizon.

`collect_bodies(ids)` (a hub whose sessions no longer show `ids`) sweeps only those ids, against
the OTHER live replicas' horizons and pins; the follower's sweep after each ack takes the rest.
A replica whose feed is cut for longer than the lease loses its protection: its sessions answer
NO for such a message, as before this module.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Sequence

import psycopg

from ..config.gateway import MIN_LEASE_ACKS

__all__ = ["ReplicaTiming", "DEFAULT_TIMING", "SWEEP_BATCH", "note_orphans", "snapshot_xmin",
           "pending_mailboxes", "write_ack", "sweep"]

SWEEP_BATCH = 1000          # bodies deleted per sweep transaction


class ReplicaTiming(NamedTuple):
    """`gateway.store_ack_interval` and `gateway.store_replica_lease`, in seconds."""

    ack_interval: float = 2.0   # between acks: horizon, pins and lease renewed, then a sweep
    lease: float = 60.0         # a replica not acked for this long is dead: its pins stop counting

    def check(self) -> None:
        """Refuse a lease that a few late acks (a busy database, a GC pause) would run out:
        the replica's sessions would lose the bodies they still show."""
        if not self.ack_interval > 0:
            raise ValueError("the ack interval must be positive")
        if self.lease < MIN_LEASE_ACKS * self.ack_interval:
            raise ValueError(f"the replica lease must be at least {MIN_LEASE_ACKS} ack intervals")


DEFAULT_TIMING = ReplicaTiming()

Conn = psycopg.Connection[Any]
_XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def note_orphans(c: Conn, body_ids: Iterable[int]) -> None:
    """In the transaction that removed messages: their bodies may have become orphans."""
    ids = sorted(set(body_ids))
    if ids:
        c.execute("INSERT INTO orphans(body_id, xid) "
                  "SELECT b, pg_current_xact_id()::text::bigint FROM unnest(%s::bigint[]) AS b "
                  "ON CONFLICT (body_id) DO UPDATE SET xid = excluded.xid", (ids,))


def snapshot_xmin(c: Conn) -> int:
    """Every transaction with a lower id has finished (committed or rolled back)."""
    row = c.execute(f"SELECT {_XMIN}").fetchone()
    assert row is not None
    return int(row[0])


def pending_mailboxes(c: Conn, horizon: int) -> list[tuple[int, int, int]]:
    """(mailbox, account, HIGHESTMODSEQ) of every mailbox of the accounts that have orphans at
    or past `horizon`: the change logs an ack must have delivered."""
    return [(r[0], r[1], r[2]) for r in c.execute(
        "SELECT id, account_id, highest_modseq FROM mailboxes WHERE account_id IN "
        "(SELECT b.account_id FROM orphans o JOIN bodies b ON b.id = o.body_id "
        " WHERE o.xid >= %s) ORDER BY id", (horizon,))]


def write_ack(c: Conn, origin: str, horizon: int, pins: Iterable[int]) -> None:
    """Renew this replica's lease, advance its horizon, replace its pins."""
    pinned = sorted(set(pins))
    c.execute("INSERT INTO replicas(origin, seen_at, horizon) VALUES (%s, now(), %s) "
              "ON CONFLICT (origin) DO UPDATE SET seen_at = now(), "
              "horizon = GREATEST(replicas.horizon, excluded.horizon)", (origin, horizon))
    c.execute("DELETE FROM pins WHERE origin = %s AND NOT body_id = ANY(%s)", (origin, pinned))
    if pinned:
        c.execute("INSERT INTO pins(origin, body_id) SELECT %s, unnest(%s::bigint[]) "
                  "ON CONFLICT DO NOTHING", (origin, pinned))


def sweep(c: Conn, lease_s: float, *, only: Sequence[int] | None = None,
          exclude: str | None = None) -> list[int]:
    """Delete collectible bodies (see the module docstring); returns their ids. `only`: just
    those ids; `exclude`: a replica whose horizon and pins do not count (the caller's own,
    when it vouches for `only` itself)."""
    c.execute("DELETE FROM replicas WHERE seen_at < now() - make_interval(secs => %s)",
              (lease_s,))
    row = c.execute(f"SELECT LEAST({_XMIN}, (SELECT min(horizon) FROM replicas "
                    "WHERE origin IS DISTINCT FROM %s))", (exclude,)).fetchone()
    assert row is not None
    bound = int(row[0])
    unpinned = ("NOT EXISTS (SELECT 1 FROM pins p WHERE p.body_id = o.body_id "
                "AND p.origin IS DISTINCT FROM %(exclude)s)")
    subset = "" if only is None else "AND o.body_id = ANY(%(only)s) "
    ids = [r[0] for r in c.execute(
        "DELETE FROM orphans WHERE body_id IN (SELECT o.body_id FROM orphans o "
        f"WHERE o.xid < %(bound)s {subset}AND {unpinned} ORDER BY o.xid LIMIT %(limit)s) "
        "AND xid < %(bound)s RETURNING body_id",
        {"bound": bound, "exclude": exclude, "only": sorted(set(only or ())),
         "limit": SWEEP_BATCH})]
    if not ids:
        return []
    return [r[0] for r in c.execute(
        "DELETE FROM bodies b WHERE b.id = ANY(%s) AND NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.body_id = b.id) RETURNING b.id", (ids,))]
