"""The sans-IO decisions of upstream connection reuse (proxy/relay/upstream_pool.py): what is
kept of credentials, which parked connection a login takes, what is dropped and why, and what
a session's commands leave on its connection; and `upstreams.NAME.imap.reuse`'s checks."""

from __future__ import annotations

import pytest

from proxy import config as config_mod
from proxy.config import ImapService, Reuse
from proxy.relay.upstream_pool import MAX_PER_USER, Parked, Pool, SessionState, secret

KEY = b"k" * 32
RUNTIME = object()


def entry(user: str = "u", password: bytes = b"pw", *, upstream: str = "main",
          logged_in: float = 0.0, parked: float = 0.0, owner: object = RUNTIME,
          conn: str = "c") -> Parked[str]:
    return Parked(upstream, user, secret(KEY, user, password), logged_in, parked, owner, conn)


def take(pool: Pool[str], user: str = "u", password: bytes = b"pw", *, now: float = 1.0,
         owner: object = RUNTIME, max_age: float = 60.0, max_idle: float = 30.0
         ) -> tuple[str | None, list[tuple[str, str]]]:
    found, dropped = pool.take("main", user, secret(KEY, user, password), owner, now, max_age,
                               max_idle)
    return (None if found is None else found.conn), [(e.conn, why) for e, why in dropped]


def test_the_secret_keeps_neither_user_nor_password_and_depends_on_the_key() -> None:
    kept = secret(KEY, "alice", b"hunter2")
    assert len(kept) == 32 and b"hunter2" not in kept and b"alice" not in kept
    assert kept == secret(KEY, "alice", b"hunter2")
    assert kept != secret(b"x" * 32, "alice", b"hunter2")
    assert kept != secret(KEY, "alice", b"hunter3")
    # the separator: ("ab", "c") and ("a", "bc") differ
    assert secret(KEY, "ab", b"c") != secret(KEY, "a", b"bc")


def test_a_login_takes_only_the_same_users_connection_with_the_same_password() -> None:
    pool: Pool[str] = Pool(4)
    assert pool.park(entry(conn="alice's")) == []
    assert take(pool, user="bob") == (None, [])
    assert len(pool) == 1
    assert take(pool) == ("alice's", [])
    assert len(pool) == 0
    assert take(pool) == (None, [])   # each parked connection is taken once


def test_another_password_takes_nothing_and_closes_the_users_parked_connections() -> None:
    """A changed password makes them useless, and each holds one of the user's connections at
    the upstream (Dovecot's per user and address limit)."""
    pool: Pool[str] = Pool(8)
    pool.park(entry(conn="old password's"))
    pool.park(entry(user="bob", conn="bob's"))
    assert take(pool, password=b"new") == (None, [("old password's", "superseded")])
    assert take(pool, user="bob") == ("bob's", [])


def test_a_user_has_at_most_max_per_user_parked() -> None:
    pool: Pool[str] = Pool(16)
    for n in range(MAX_PER_USER):
        assert pool.park(entry(conn=f"u{n}")) == []
    assert [(e.conn, why) for e, why in pool.park(entry(conn="last"))] == [("u0", "full")]
    assert pool.park(entry(user="v", conn="v's")) == []   # another user's share
    assert len(pool) == MAX_PER_USER + 1


def test_the_most_recently_parked_is_taken_first() -> None:
    pool: Pool[str] = Pool(4)
    pool.park(entry(conn="older", parked=0.0))
    pool.park(entry(conn="newer", parked=0.5))
    assert take(pool) == ("newer", [])
    assert take(pool) == ("older", [])


def test_another_upstreams_connection_is_not_taken() -> None:
    pool: Pool[str] = Pool(4)
    pool.park(entry(upstream="other"))
    assert take(pool) == (None, [])


def test_max_age_counts_from_the_real_login_and_max_idle_from_the_park() -> None:
    pool: Pool[str] = Pool(4)
    pool.park(entry(conn="old login", logged_in=0.0, parked=50.0))
    pool.park(entry(conn="long parked", logged_in=20.0, parked=20.0))
    assert take(pool, now=60.0, max_age=60.0, max_idle=30.0) == (
        None, [("long parked", "idle"), ("old login", "expired")])
    assert len(pool) == 0


def test_what_is_too_old_is_dropped_as_such_whatever_the_password() -> None:
    pool: Pool[str] = Pool(4)
    pool.park(entry(conn="old", logged_in=0.0))
    assert take(pool, password=b"wrong", now=100.0) == (None, [("old", "expired")])


def test_past_size_the_oldest_parked_is_dropped() -> None:
    pool: Pool[str] = Pool(2)
    assert pool.park(entry(conn="a")) == []
    assert pool.park(entry(user="v", conn="b")) == []
    assert [(e.conn, why) for e, why in pool.park(entry(user="w", conn="c"))] == [("a", "full")]
    assert take(pool) == (None, [])
    assert take(pool, user="v") == ("b", [])


def test_another_runtimes_connections_are_emptied_a_reload() -> None:
    pool: Pool[str] = Pool(4)
    pool.park(entry(conn="before"))
    reloaded = object()
    assert take(pool, owner=reloaded) == (None, [("before", "emptied")])
    pool.park(entry(conn="old runtime's"))
    assert [(e.conn, why) for e, why in pool.park(entry(conn="new", owner=reloaded))] == [
        ("old runtime's", "emptied")]


def test_expire_and_clear() -> None:
    pool: Pool[str] = Pool(4)
    pool.park(entry(conn="young", logged_in=50.0, parked=50.0))
    pool.park(entry(user="v", conn="old", logged_in=0.0, parked=50.0))
    assert [(e.conn, why) for e, why in pool.expire(61.0, 60.0, 30.0)] == [("old", "expired")]
    assert [(e.conn, why) for e, why in pool.clear()] == [("young", "emptied")]
    assert len(pool) == 0


# -- SessionState ------------------------------------------------------------------------------
def judged(*chunks: bytes) -> tuple[bool, bool, bytes | None]:
    state = SessionState()
    tag = None
    for chunk in chunks:
        tag = state.chunk(chunk)
    return state.tainted, state.selected, tag


def test_a_logout_alone_is_the_moment_to_park() -> None:
    assert judged(b"a1 LOGOUT\r\n") == (False, False, b"a1")
    assert judged(b"a1 logout\r\n") == (False, False, b"a1")


@pytest.mark.parametrize("chunks, selected", [
    ((b"a SELECT INBOX\r\n", b"b FETCH 1:* (FLAGS)\r\n", b"c UID SEARCH ALL\r\n"), True),
    ((b"a EXAMINE INBOX\r\n", b"b STORE 1 +FLAGS (\\Seen)\r\n"), True),
    ((b"a SELECT INBOX\r\n", b"b CLOSE\r\n"), False),
    ((b"a SELECT INBOX\r\n", b"b UNSELECT\r\n"), False),
    ((b"a LIST \"\" *\r\n", b"b STATUS INBOX (MESSAGES UIDNEXT)\r\nc NOOP\r\n"), False),
    ((b"a CREATE x\r\n", b"b SELECT x\r\n", b"c UID MOVE 1 INBOX\r\n"), True),
])
def test_commands_undone_by_unselect_leave_the_connection_clean(chunks: tuple[bytes, ...],
                                                                selected: bool) -> None:
    assert judged(*chunks, b"z LOGOUT\r\n") == (False, selected, b"z")


@pytest.mark.parametrize("chunk", [
    b"a ENABLE CONDSTORE\r\n",
    b"a ENABLE UTF8=ACCEPT\r\n",
    b"a IDLE\r\n",
    b"a COMPRESS DEFLATE\r\n",
    b"a NOTIFY SET (SELECTED (MessageNew))\r\n",
    b"a ID (\"name\" \"x\")\r\n",
    b"a XUNKNOWN\r\n",
    b"a SELECT INBOX (CONDSTORE)\r\n",
    b"a EXAMINE INBOX (QRESYNC (1 2))\r\n",
    b"a FETCH 1:* (FLAGS MODSEQ)\r\n",
    b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12)\r\n",
    b"a STORE 1 (UNCHANGEDSINCE 3) +FLAGS (\\Seen)\r\n",
    b"a SEARCH MODSEQ 5\r\n",
    b"a STATUS INBOX (HIGHESTMODSEQ)\r\n",
    b"a APPEND INBOX {3}\r\n",
    b"a SELECT INB",                       # a line in parts
    b"a NOOP\r\nb LOGOUT\r\n",             # a LOGOUT pipelined behind a command
    b"a UID\r\n",
    b"\r\n",
    b"+ LOGOUT\r\n",                      # not a tag: the upstream answers BAD
    b"a{ LOGOUT\r\n",
])
def test_what_cannot_be_undone_taints_the_connection_for_good(chunk: bytes) -> None:
    assert judged(chunk, b"z LOGOUT\r\n") == (True, False, None)


# -- the config key -----------------------------------------------------------------------------
BASE = """\
listeners:
  - {name: imap, protocol: imap, address: 127.0.0.1:1143}
upstreams:
  main: {host: %s, imap: {port: 143%s}}
routes:
  - {match: "*", upstream: main}
"""


def test_reuse_is_off_by_default_and_its_defaults() -> None:
    imap = config_mod.loads(BASE % ("127.0.0.1", "")).upstreams["main"].imap
    assert isinstance(imap, ImapService) and imap.reuse is None
    imap = config_mod.loads(BASE % ("127.0.0.1", ", reuse: {}")).upstreams["main"].imap
    assert isinstance(imap, ImapService)
    assert imap.reuse == Reuse(max_age=60.0, max_idle=30.0, size=16)


@pytest.mark.parametrize("host, extra, error", [
    ("127.0.0.1", ", reuse: {size: 0}", "line 4: upstreams.main.imap.reuse.size: must be 1 to 1024"),
    ("127.0.0.1", ", reuse: {max_age: 0s}",
     "line 4: upstreams.main.imap.reuse.max_age: must be above 0 and at most 3600s"),
    ("127.0.0.1", ", tls: implicit, reuse: {}",
     "line 4: upstreams.main.imap.reuse: reused connections are the relay engine's logins: "
     "they need tls: none"),
    ("mail.example", ", reuse: {}",
     "line 4: upstreams.main.imap.reuse: reused connections are the relay engine's logins: "
     "they need an IP address as host"),
])
def test_settings_that_would_never_reuse_are_refused(host: str, extra: str, error: str) -> None:
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE % (host, extra))
    assert caught.value.errors == [error]


def test_with_forward_client_ip_the_pool_key_holds_both_addresses_the_id_gives() -> None:
    """The login's ID tells the upstream the client's address and the proxy's own
    (x-originating-ip, x-connected-ip: imap_upstream.id_fields): a connection is reused only
    for a session with both the same (engine_reuse.pool_user); without forward_client_ip the
    upstream knows neither, and the key is the user alone."""
    from types import SimpleNamespace

    from proxy.relay.engine_reuse import pool_user

    def key(forward: bool, client_ip: str, local_ip: str) -> str:
        session = SimpleNamespace(client_ip=client_ip, local_ip=local_ip)
        upstream = SimpleNamespace(forward_client_ip=forward)
        return pool_user(session, upstream, "u")   # type: ignore[arg-type]

    assert key(True, "192.0.2.1", "10.0.0.1") == key(True, "192.0.2.1", "10.0.0.1")
    assert key(True, "192.0.2.1", "10.0.0.1") != key(True, "192.0.2.2", "10.0.0.1")
    assert key(True, "192.0.2.1", "10.0.0.1") != key(True, "192.0.2.1", "10.0.0.2")
    assert key(False, "192.0.2.1", "10.0.0.1") == key(False, "192.0.2.2", "10.0.0.2") == "u"
