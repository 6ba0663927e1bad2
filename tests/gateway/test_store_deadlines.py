"""The store's per-call bound (proxy/store/_pg_deadline.py) on its own: the reaper shuts the
socket of a call past its deadline down, which wakes a thread blocked reading it, and never
touches a call that finished (its connection is back in the pool, maybe serving another call).
The real thing, a frozen PostgreSQL server, is tests/gateway_imapd/test_store_frozen.py."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from proxy.store._pg_deadline import Deadlines, tcp_options
from support import polling


def fake_connection(sock: socket.socket) -> SimpleNamespace:
    return SimpleNamespace(pgconn=SimpleNamespace(socket=sock.fileno()))


@pytest.fixture
def reaper():
    """A store's deadlines (0.2 s per call) and a connected socket pair (ours, the server's)."""
    deadlines = Deadlines(0.2)
    ours, server = socket.socketpair()
    yield deadlines, ours, server
    deadlines.close()
    ours.close()
    server.close()


def test_a_call_past_its_deadline_has_its_socket_shut_down(reaper):
    deadlines, ours, _ = reaper
    with deadlines.call() as watch:
        watch.use(fake_connection(ours))
        ours.settimeout(60)   # a bound for a broken reaper: the test fails, never hangs
        assert ours.recv(1) == b""   # woken by the shutdown, as libpq would be
        assert watch.expired


def test_a_finished_call_is_never_expired(reaper):
    deadlines, ours, server = reaper
    with deadlines.call() as first:
        first.use(fake_connection(ours))
        first.use(None)
    with deadlines.call() as second:   # expired later than `first` would have been
        polling.wait_for(lambda: second.expired, "the second call expired")
    assert not first.expired
    server.sendall(b"x")
    assert ours.recv(1) == b"x"   # still open both ways


def test_a_later_call_with_an_earlier_deadline_is_cut_at_its_own(reaper):
    """A writing call's statements end before the bound, a cut COMMIT's doubt at it
    (`_pg_calls.py`): the watches' deadlines are not in the order they start in."""
    deadlines, _, _ = reaper
    with deadlines.call(time.monotonic() + 3600) as late, deadlines.call() as early:
        polling.wait_for(lambda: early.expired, "the later call with the earlier deadline cut")
        assert not late.expired


def test_connection_options_bound_a_silent_peer():
    assert tcp_options(30) == {"keepalives": 1, "keepalives_idle": 8, "keepalives_interval": 8,
                               "keepalives_count": 3, "tcp_user_timeout": 30000}
    with pytest.raises(ValueError):
        Deadlines(0)
