"""A session's task parks in the relay engine exactly when it recorded itself there
(proxy/relay/engine.py, Engine.relay): the session may end before the task parks (here, at
once by a drain already under way; in CI it was the engine's thread seeing the client's QUIT),
and its reschedule then still has to find the task waiting for it. Before the fix the task
went on and the late reschedule made trio fail with TrioInternalError."""

from __future__ import annotations

import types

import trio

from proxy.net.conn import Conn
from proxy.relay.engine import Engine
from proxy.relay.engine_session import EngineSession
from proxy.session.context import Drain
from proxy.session.failures import Close


class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class EndsWhenDrained(EngineSession):
    def received(self, side, data: bytes) -> None:
        pass

    def drained(self) -> None:
        self._end(Close.SHUTDOWN)


def fake_session(drain: Drain, gauge: Count) -> types.SimpleNamespace:
    runtime = types.SimpleNamespace(drain=drain,
                                    metrics=types.SimpleNamespace(relay_engine_sessions=gauge))
    return types.SimpleNamespace(runtime=runtime, close_reason=None, log_fields=dict)


async def conn_pair() -> tuple[Conn, Conn]:
    a, b = trio.socket.socketpair()
    return Conn(trio.SocketStream(a)), Conn(trio.SocketStream(b))


def test_a_session_ended_before_its_task_parks_wakes_that_task_once():
    async def main() -> list[str]:
        drain, gauge = Drain(), Count()
        drain.set()   # the drain is under way when the session enters the engine
        engine = Engine()
        client, client_peer = await conn_pair()
        upstream, upstream_peer = await conn_pair()
        sess = EndsWhenDrained(engine, fake_session(drain, gauge), client, client.stream.socket.fileno(),
                               upstream, upstream.stream.socket.fileno())
        steps = ["relayed" if await engine.relay(sess) else "handed back"]
        # the task goes on: a stray reschedule would land on one of these waits
        for _ in range(5):
            await trio.sleep(0.01)
            steps.append("slept")
        steps.append(f"sessions {engine.sessions}, gauge {gauge.value}, "
                     f"reason {sess.session.close_reason.name}")
        for conn in (client, client_peer, upstream, upstream_peer):
            conn.stream.socket.close()
        return steps

    assert trio.run(main) == ["relayed"] + ["slept"] * 5 + [
        "sessions 0, gauge 0, reason SHUTDOWN"]
