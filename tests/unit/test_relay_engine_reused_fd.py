"""A descriptor number closed and reused within one of the relay engine's wake-ups
(proxy/relay/engine_loop.py `_fresh`): the poll's events for the closed descriptor must not
reach the new one. With the engine accepting and ending sessions itself this is common (a
session ends, the next one connects upstream on the same number); the stale readable event was
handed to the connecting upstream, whose greeting was read as the connect's end and lost
(`NO [UNAVAILABLE]` for about one login in a thousand at 16 concurrent, bench/run.sh).

The loop runs in the test's thread (no engine thread): two sessions are ready in one poll, and
whichever is served first closes the other and puts a new descriptor, already readable, on its
number, as the kernel would."""

from __future__ import annotations

import os
import socket
import types

import trio

from proxy.relay.engine import Engine
from proxy.relay.engine_session import EngineSession, Side


class _Gauge:
    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


def _session() -> types.SimpleNamespace:
    metrics = types.SimpleNamespace(relay_engine_sessions=_Gauge())
    return types.SimpleNamespace(runtime=types.SimpleNamespace(metrics=metrics),
                                 close_reason=None, log_fields=dict)


def _conn() -> types.SimpleNamespace:
    return types.SimpleNamespace(stream=None, closed=False, eof=False, bytes_in=0, bytes_out=0)


class Reader(EngineSession):
    """A one-sided session recording what it reads; `on_data` runs at its first chunk."""

    def __init__(self, engine: Engine, sock: socket.socket):
        super().__init__(engine, _session(), _conn(), sock.fileno(), None, -1)  # type: ignore[arg-type]
        self.sock = sock
        self.got: list[bytes] = []
        self.on_data = lambda: None

    def received(self, side: Side, data: bytes) -> None:
        self.got.append(data)
        self.on_data()


def _readable_pair(data: bytes) -> tuple[socket.socket, socket.socket]:
    end, peer = socket.socketpair()
    end.setblocking(False)
    peer.send(data)
    return end, peer


def test_a_closed_descriptors_events_never_reach_the_one_reusing_its_number():
    async def main() -> None:
        engine = Engine()
        engine._running = True   # (no thread: the test runs the loop's wake-ups itself)
        x_end, x_peer = _readable_pair(b"x")
        a_end, a_peer = _readable_pair(b"a")
        x, a = Reader(engine, x_end), Reader(engine, a_end)
        made: list[Reader] = []
        keep: list[socket.socket] = [x_peer, a_peer]

        def replace(other: Reader) -> None:
            """Close `other` and put a new, readable descriptor on its number."""
            if made:
                return
            number = other.sock.fileno()
            engine.release(other)
            other.sock.close()
            reused, new_peer = _readable_pair(b"the new descriptor's greeting")
            if reused.fileno() != number:   # (the kernel gives the lowest free number)
                os.dup2(reused.fileno(), number)
                reused.close()
                reused = socket.socket(fileno=number)
                reused.setblocking(False)
            keep.extend((new_peer, reused))
            made.append(Reader(engine, reused))
            engine.adopt(made[0])
            engine._stopped = True   # (the loop returns after this wake-up)

        x.on_data = lambda: replace(a)
        a.on_data = lambda: replace(x)
        with engine._lock:
            engine.adopt(x)
            engine.adopt(a)
        engine._loop()   # one wake-up: both were ready when registered
        assert sorted(len(r.got) for r in (x, a)) == [0, 1]   # one replaced before its turn
        new = made[0]
        assert new.got == []   # the closed one's event was not handed to it

        def stop() -> None:
            engine._stopped = True

        new.on_data = stop
        engine._stopped = False
        engine._loop()   # the next wake-up: its own event (level-triggered), nothing lost
        assert new.got == [b"the new descriptor's greeting"]
        for sock in (x_end, a_end, *keep):
            sock.close()
        engine._epoll.close()

    trio.run(main)
