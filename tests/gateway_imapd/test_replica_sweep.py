"""RFC 2180 4.1.1 across processes, the case the other replica tests leave out: the session that
still shows an expunged message and the session that expunged it are in the SAME process (A),
and the other process (B) sweeps: its follower's sweep after each ack, and the collect after a
command of its own session, which has sent the EXPUNGE and let the body go. B's sweeps must
leave the body to A's session (A's horizon and pins, proxy/store/_pg_bodies.py) until that
session has been sent the EXPUNGE too; then the body is collected. Real `mailproxy serve`
processes on one real PostgreSQL."""

from __future__ import annotations

from support.polling import wait_for

from .conftest import message
from .test_condstore import Raw
from .test_replicas import DB_POLL, both_acked_past_now, gateway_config, query


def test_a_sweep_on_one_replica_leaves_a_body_shown_by_a_session_on_the_other(
        proxy_factory, dovecot, pg_dsn):
    name, password = dovecot.add_user()
    for n in range(2):
        dovecot.deliver(name, message(n))
    a = proxy_factory(gateway_config(dovecot, pg_dsn))
    b = proxy_factory(gateway_config(dovecot, pg_dsn))
    viewer, expunger = Raw(a.port("gw"), name, password), Raw(a.port("gw"), name, password)
    on_b = Raw(b.port("gw"), name, password)
    for client in (viewer, expunger, on_b):
        assert b"* 2 EXISTS" in client.cmd("SELECT INBOX")[0]

    assert expunger.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")[1].split()[1] == b"OK"
    assert expunger.cmd("EXPUNGE")[0] == [b"* 1 EXPUNGE"]
    [(body_id,)] = wait_for(lambda: query(pg_dsn, "SELECT body_id FROM orphans"), "the orphan",
                            **DB_POLL)
    wait_for(lambda: query(pg_dsn, "SELECT 1 FROM pins WHERE body_id = %s", body_id),
             "A's pin (its viewer still shows UID 1)", **DB_POLL)
    # B's session hears of the expunge from the change feed and sends it: B keeps nothing, and
    # the collect after this command sweeps the body, against the other replica's pins
    wait_for(lambda: on_b.cmd("NOOP")[0] == [b"* 1 EXPUNGE"], "B's session told of the expunge",
             **DB_POLL)
    both_acked_past_now(pg_dsn)            # ... and both followers swept after acking, twice
    both_acked_past_now(pg_dsn)
    # only A pins it now (B's ack after its EXPUNGE wrote B's pins without it)
    assert query(pg_dsn, "SELECT count(*) FROM pins WHERE body_id = %s", body_id) == [(1,)]
    assert on_b.cmd("NOOP")[1].split()[1] == b"OK"   # one more collect on B

    lines, done = viewer.cmd("FETCH 1 (BODY.PEEK[TEXT])")   # no EXPUNGE during FETCH (7.4.1)
    assert done.split()[1] == b"OK"
    assert lines[1:] == [b"body of message 0", b")",
                         b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))"]   # its first SELECT
    assert viewer.cmd("NOOP")[0] == [b"* 1 EXPUNGE"]
    wait_for(lambda: not query(pg_dsn, "SELECT 1 FROM bodies WHERE id = %s", body_id),
             "the body collected once no session shows it", **DB_POLL)
    assert query(pg_dsn, "SELECT count(*) FROM orphans") == [(0,)]
    for client in (viewer, expunger, on_b):
        client.close()
