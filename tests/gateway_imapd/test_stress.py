"""The randomized multi-session tester (stress/) against direct Dovecot IMAP (the reference: it
checks the tester) and against the gateway (issue 13). Seeded: the seed is printed on failure;
MAILPROXY_STRESS_SEED repeats a run, MAILPROXY_STRESS_SECONDS makes it longer (default 20 s each),
MAILPROXY_STRESS_SESSIONS changes the number of sessions (default 6), MAILPROXY_STRESS_REPLICAS
the number of gateway processes of the PostgreSQL test (default 2). MAILPROXY_STRESS_TRACE=DIR
writes there, at a run's first error, each session's last lines sent and received and (for the
in-process gateway) the gateway's side: hub events, views' SELECT snapshots and updates
(stress/server_trace.py).

The default mix is the wide one: steps.py's mix (mailboxes created/renamed/deleted while selected
elsewhere, COPY/MOVE, QRESYNC reconnects, UNCHANGEDSINCE, ingest mid-run) on top of the core
mix; MAILPROXY_STRESS_MIX=core runs the core mix alone (APPEND, FETCH, STORE, EXPUNGE, SEARCH,
NOOP, IDLE, pipelines). The wide mix became the default in the seventh session of 2026-12-06,
after 130 runs of the sixth and 60+ of the seventh (random seeds, SQLite and PostgreSQL) came
out clean once the causes below were fixed; it takes the same MAILPROXY_STRESS_SECONDS.
Against the gateway it found two causes of a session left with a message the
store no longer has, both fixed with forced-interleaving tests (test_view_units.py): a message
expunged before the hub announced its arrival, and a message a session expunged itself before
that announcement reached it (it came back). A `[MODIFIED]` whose MODSEQ had not moved (seen
once in 73 runs of the fourth session) is explained and fixed with a forced-interleaving test
(test_condstore.py): the change that failed the STORE was committed but not yet published. The
wide mix found a session crash on a selected mailbox deleted elsewhere (test_sessions.py) and
`NO [EXPUNGEISSUED]` for a message a session still showed: DELETE of another mailbox removed
the body its copy shared (test_views.py; seed 1218242009 on SQLite). CI must not depend on
luck. Dovecot passes it."""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3

import psycopg
import trio

from support.polling import TIMEOUT, wait_until

from .stress import run as stress_run
from .stress import session as stress_session
from .stress.model import Shared
from .stress.run import Target, _write_traces, run_stress
from .stress.server_trace import ServerTrace

SECONDS = float(os.environ.get("MAILPROXY_STRESS_SECONDS", "20"))
SESSIONS = int(os.environ.get("MAILPROXY_STRESS_SESSIONS", "6"))
ERRORS_SHOWN = int(os.environ.get("MAILPROXY_STRESS_ERRORS", "25"))
WIDE = os.environ.get("MAILPROXY_STRESS_MIX", "wide") == "wide"
REPLICAS = int(os.environ.get("MAILPROXY_STRESS_REPLICAS", "2"))
SEED = int(os.environ["MAILPROXY_STRESS_SEED"]) if os.environ.get("MAILPROXY_STRESS_SEED") else None
TRACE = os.environ.get("MAILPROXY_STRESS_TRACE")


async def _stress(target: Target, deliver, allow_nil: bool = False, server_trace=None):
    result = await trio.to_thread.run_sync(
        lambda: run_stress(target, sessions=SESSIONS, seconds=SECONDS, seed=SEED,
                           allow_nil=allow_nil, deliver=deliver, wide=WIDE, trace_dir=TRACE,
                           server_trace=server_trace))
    print(result.report(ERRORS_SHOWN))
    assert not result.errors, result.report()
    assert result.checkpoints == max(1, round(SECONDS / 2.5)), result.report()
    return result


async def test_stress_dovecot_reference(dovecot, monkeypatch):
    # Dovecot (maildir) may keep a command waiting up to 60 s on its own mailbox list lock
    # (mailboxes.lock) while sessions create, rename and delete the scratch mailboxes: in one of
    # 22 runs under scripts/stall_tests.py (seed 4199280942) four sessions' commands waited that
    # long for the lock one imap process held ('Timed out after 60 seconds' in Dovecot's log),
    # and at 30 s the tester took Dovecot for hung. Against the reference, silence up to
    # Dovecot's own lock timeout is not a hang; the gateway keeps the 30 s bound.
    for module in (stress_session, stress_run):
        monkeypatch.setattr(module, "READ_TIMEOUT", 90.0)
    user, password = dovecot.add_user()
    # Dovecot (maildir) answers NIL for bodies another session expunged (RFC 2180 4.1.2)
    await _stress(Target(dovecot.host, dovecot.imap_port, user, password),
                  lambda data: dovecot.deliver(user, data), allow_nil=True)



async def test_stress_gateway(gateway, monkeypatch):
    trace = None
    if TRACE:   # the gateway's side too (it runs in this process)
        trace = ServerTrace()
        trace.install(monkeypatch)
    await _stress(Target("127.0.0.1", gateway.port, gateway.user, gateway.password),
                  gateway.deliver, server_trace=trace.lines if trace is not None else None)
    await _no_body_left_behind(gateway)


async def _no_body_left_behind(gateway) -> None:
    """Once every session has left, one collect leaves no body that no message refers to:
    removed mail is not kept (a body dropped from the hub's garbage list stayed until the next
    start on SQLite: hub.py `removing`)."""
    [backend] = gateway.service._backends.values()   # the one account's
    hub = backend.hub
    await wait_until(lambda: not hub._listeners, "every session's view to close")
    if gateway.store_url.startswith("postgresql"):
        # the store deletes an orphaned body only once no transaction that began before it was
        # orphaned is still open (`_pg_bodies.sweep`: its xid below the snapshot's xmin), and the
        # gateway's own background transactions (acks, the change feed) may span that commit
        # (polled: nothing tells of another transaction's end)
        with trio.fail_after(TIMEOUT):
            while True:
                if not await trio.to_thread.run_sync(_orphans_in_sight, gateway.store_url):
                    break
                await trio.sleep(0.05)
    await hub.collect(gateway.service.store)
    left = await trio.to_thread.run_sync(_unreferenced_bodies, gateway.store_url)
    if left and gateway.store_url.startswith("postgresql"):
        # On PostgreSQL the hub's collect is not the only one: a body orphaned where this hub
        # was not told of it is swept by the change follower after its next ack (every
        # store_ack_interval, `_pg_bodies.py`), once its horizon passes the orphan's xid. Seen
        # here (seed 1182446686, 1 run in ~30 at load 2-15): two bodies with orphan rows, no
        # pins, the replica's horizon below their xid; swept 0.4 s later. A body with no
        # orphan row would never be swept: that is the leak this check is for.
        with trio.fail_after(TIMEOUT):
            while left:
                unswept = await trio.to_thread.run_sync(_without_orphan_row, gateway.store_url,
                                                        left)
                assert unswept == [], f"bodies no message refers to and no sweep will take: {unswept}"
                await trio.sleep(0.05)
                left = await trio.to_thread.run_sync(_unreferenced_bodies, gateway.store_url)
    assert left == [], f"bodies no message refers to, after the last collect: {left}"


def _orphans_in_sight(store_url: str) -> bool:
    """Some orphaned body may still be seen by a transaction open on PostgreSQL."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM orphans WHERE xid >= "
                           "pg_snapshot_xmin(pg_current_snapshot())::text::bigint)").fetchone()
    return bool(row and row[0])


def _without_orphan_row(store_url: str, body_ids: list[int]) -> list[int]:
    """Of `body_ids`, those no `orphans` row names, if still unreferenced (PostgreSQL)."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT b.id FROM bodies b WHERE b.id = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM orphans o WHERE o.body_id = b.id) "
            "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = b.id) ORDER BY b.id",
            (body_ids,))]


def _unreferenced_bodies(store_url: str) -> list[int]:
    query = ("SELECT b.id FROM bodies b WHERE NOT EXISTS "
             "(SELECT 1 FROM messages m WHERE m.body_id = b.id) ORDER BY b.id")
    if store_url.startswith("postgresql"):
        with psycopg.connect(store_url, autocommit=True) as conn:
            return [row[0] for row in conn.execute(query)]
    with contextlib.closing(sqlite3.connect(store_url)) as conn:
        return [row[0] for row in conn.execute(query)]


def test_stress_two_gateway_processes_on_one_postgresql(proxy_factory, dovecot, pg_dsn):
    """Issue 15: the tester's sessions spread over two real `mailproxy serve` processes on one
    PostgreSQL database: every checkpoint agrees (once the change feed has caught up) and no
    command breaks the model, RFC 2180 4.1.1 included (no NIL for bodies expunged elsewhere)."""
    from .test_replicas import gateway_config

    user, password = dovecot.add_user()
    targets = [Target("127.0.0.1", proxy_factory(gateway_config(dovecot, pg_dsn)).port("gw"),
                      user, password) for _ in range(REPLICAS)]
    result = run_stress(targets[0], sessions=SESSIONS, seconds=SECONDS, seed=SEED,
                        others=tuple(targets[1:]),
                        deliver=lambda data: dovecot.deliver(user, data), wide=WIDE,
                        trace_dir=TRACE)
    print(result.report())
    assert not result.errors, result.report()
    assert result.checkpoints == max(1, round(SECONDS / 2.5)), result.report()


def test_traces_are_written_to_a_directory_not_made_yet(tmp_path):
    """MAILPROXY_STRESS_TRACE naming a directory that does not exist: the traces are written
    there (the failed open was the run's second error, a traceback hiding the first's trace)."""
    shared = Shared()
    shared.traces[1] = collections.deque([b"a1 NOOP", b"a1 OK"])
    _write_traces(str(tmp_path / "not" / "yet"), 42, shared, lambda: [b"hub: event"])
    assert (tmp_path / "not" / "yet" / "42-s1.txt").read_bytes() == b"a1 NOOP\na1 OK\n"
    assert (tmp_path / "not" / "yet" / "42-server.txt").read_bytes() == b"hub: event\n"
