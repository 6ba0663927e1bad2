"""A session's task parks in the relay engine exactly when it recorded itself there
(proxy/relay/engine.py, Engine.relay): the session may end before the task parks (here, at
once by a drain already under way; in CI it was the engine's thread seeing the client's QUIT),
and its reschedule then still has to find the task waiting for it. Before the fix the task
went on and the late reschedule made trio fail with TrioInternalError."""

from __future__ import annotations

import threading
import types

import trio
import trio.testing

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


class CrashingEngine(Engine):
    """An engine whose thread's loop fails (a bug outside any session's step) once told to."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = threading.Event()

    def _loop(self) -> None:
        self.fail.wait()
        raise RuntimeError("a bug in the engine's loop")


def test_a_crashed_engine_ends_its_sessions_and_takes_no_more():
    """The engine's thread dying must not leave its sessions parked for good (until a kick or
    the shutdown timeout), nor take new ones it would never serve: they stay on the task path."""
    async def main() -> list[str]:
        drain, gauge = Drain(), Count()
        engine = CrashingEngine()
        conns = [*await conn_pair(), *await conn_pair()]
        sess = EndsWhenDrained(engine, fake_session(drain, gauge), conns[0],
                               conns[0].stream.socket.fileno(), conns[2],
                               conns[2].stream.socket.fileno())
        steps: list[str] = []

        async def relay() -> None:
            steps.append("relayed" if await engine.relay(sess) else "handed back")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            await trio.testing.wait_all_tasks_blocked()
            steps.append(f"parked with {engine.sessions} session(s)")
            engine.fail.set()
        assert engine.thread is not None
        await trio.to_thread.run_sync(engine.thread.join)
        steps.append(f"reason {sess.session.close_reason.name}, sessions {engine.sessions}, "
                     f"gauge {gauge.value}")
        later = EndsWhenDrained(engine, fake_session(drain, gauge), conns[1],
                                conns[1].stream.socket.fileno(), conns[3],
                                conns[3].stream.socket.fileno())
        steps.append("later " + ("relayed" if await engine.relay(later) else "on the task path"))
        steps.append(f"sessions {engine.sessions}, gauge {gauge.value}")
        for conn in conns:
            conn.stream.socket.close()
        return steps

    assert trio.run(main) == [
        "parked with 1 session(s)", "relayed", "reason INTERNAL_ERROR, sessions 0, gauge 0",
        "later on the task path", "sessions 0, gauge 0"]
