"""Two gateway replicas (real `mailproxy serve` processes) while their PostgreSQL is stopped for
a while and started again (issue 15): a command meanwhile gets `NO [UNAVAILABLE]` (RFC 5530),
an IDLE session on the other replica stays connected, and afterwards, without restarting any
replica, a write through one replica reaches the IDLE session on the other (its change feed
reconnects and catches up) and new upstream mail is fetched and pushed to both."""

from __future__ import annotations

import re

from .test_replicas import Idle, pushed_both_ways, two_replicas_selected


def test_replicas_recover_from_a_database_outage_without_a_restart(proxy_factory, dovecot,
                                                                   postgres, pg_dsn):
    name, on_a, on_b = two_replicas_selected(proxy_factory, dovecot, pg_dsn, 3)
    idle = Idle(on_b)
    postgres.stop()
    try:
        refused = on_a.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)")[1]
        assert re.match(rb"t\d+ NO \[UNAVAILABLE\]", refused), refused
    finally:
        postgres.start()
    # the same session, the same processes: the write goes through and B's IDLE is told; the
    # fetchers work again: new upstream mail reaches IDLE sessions on both replicas
    idle_a = pushed_both_ways(dovecot, name, on_a, idle, 1)
    idle.done()
    idle_a.done()
    for client in (on_a, on_b):
        lines, done = client.cmd("UID FETCH 1:* (FLAGS)")
        assert done.split()[1] == b"OK"
        assert [re.search(rb"UID (\d+)", line).group(1) for line in lines] == \
            [b"1", b"2", b"3", b"4"], lines
        assert b"\\Flagged" in lines[0] and not any(b"\\Flagged" in x for x in lines[1:]), lines
        client.close()
