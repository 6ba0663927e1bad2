"""session/serve.py's own accept loop (ListenerServer.serve, in place of trio.serve_listeners):
connections on a real listening socket reach the session with the peer's address from accept(2)
and the listener's own address as the local one (a wildcard listener asks each connection);
out-of-descriptor errors back off and accept again, errors of one connection are skipped, other
errors stop the loop; cancellation (drain, reload) closes the listener once. Errors are scripted
by a stand-in for the stdlib socket (one layer), whose readiness is a real socket's."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio

from proxy.session import serve
from proxy.session.serve import ACCEPT_BACKOFF, ListenerServer

Accepted = tuple[trio.SocketStream, tuple[str, int], "tuple[str, int] | None"]


def server_recording(into: list[Accepted], wanted: int = 1) -> tuple[ListenerServer, trio.Event]:
    """A server whose connections are only recorded; the event is set after `wanted`."""
    server = ListenerServer("imap", lambda: None, handler=None)  # type: ignore[arg-type]
    enough = trio.Event()

    async def connection(stream, peer, local):
        into.append((stream, peer, local))
        if len(into) >= wanted:
            enough.set()

    server._connection = connection  # type: ignore[method-assign]
    return server, enough


async def open_listener(host: str) -> trio.SocketListener:
    (listener,) = await trio.open_tcp_listeners(0, host=host)
    return listener


async def connect(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))
    await trio.lowlevel.checkpoint()
    return client


async def test_connections_carry_the_peer_and_the_bound_address():
    listener = await open_listener("127.0.0.1")
    port = listener.socket.getsockname()[1]
    accepted: list[Accepted] = []
    server, enough = server_recording(accepted, wanted=3)
    async with trio.open_nursery() as sessions:
        await sessions.start(server.serve, [listener], sessions)
        clients = [await connect(port) for _ in range(3)]
        with trio.fail_after(30):
            await enough.wait()
        sessions.cancel_scope.cancel()
    assert [peer for _, peer, _ in accepted] == [c.getsockname() for c in clients]
    assert {local for _, _, local in accepted} == {("127.0.0.1", port)}
    for stream, _, _ in accepted:   # plain, non-blocking trio streams, ready for the session
        assert type(stream) is trio.SocketStream
        assert os.get_blocking(stream.socket.fileno()) is False
        stream.socket.close()
    assert listener.socket.fileno() == -1   # cancelled (drain, reload): closed
    for client in clients:
        client.close()


async def test_a_wildcard_listener_leaves_the_local_address_to_each_connection():
    listener = await open_listener("0.0.0.0")
    accepted: list[Accepted] = []
    server, enough = server_recording(accepted)
    async with trio.open_nursery() as sessions:
        await sessions.start(server.serve, [listener], sessions)
        client = await connect(listener.socket.getsockname()[1])
        with trio.fail_after(30):
            await enough.wait()
        sessions.cancel_scope.cancel()
    (stream, peer, local), = accepted
    assert local is None and peer == client.getsockname()
    stream.socket.close()
    client.close()


class ScriptedSocket:
    """accept() raises or returns what the script says, then EAGAIN; always 'readable'."""

    def __init__(self, script: list[OSError | tuple[socket.socket, tuple[str, int]]]):
        self.script = script
        self.accept_times: list[float] = []
        self._readable, self._other = socket.socketpair()
        self._other.send(b"x")

    def fileno(self) -> int:
        return self._readable.fileno()

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        self.accept_times.append(trio.current_time())
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "nothing queued")
        step = self.script.pop(0)
        if isinstance(step, OSError):
            raise step
        return step

    def close(self) -> None:
        self._readable.close()
        self._other.close()


async def accept_from(script: list, wanted: int = 1) -> tuple[ScriptedSocket, list[Accepted]]:
    raw = ScriptedSocket(script)
    accepted: list[Accepted] = []
    server, enough = server_recording(accepted, wanted)
    try:
        async with trio.open_nursery() as sessions:
            sessions.start_soon(server._accept_from, raw, sessions, None)
            await enough.wait()
            sessions.cancel_scope.cancel()
    finally:
        raw.close()
    return raw, accepted


@pytest.mark.parametrize("code", sorted(serve.ACCEPT_CAPACITY_ERRNOS))
async def test_out_of_descriptors_backs_off_then_accepts_again(code, autojump_clock):
    sock, _ = socket.socketpair()
    raw, accepted = await accept_from([OSError(code, "full"), OSError(code, "full"),
                                       (sock, ("192.0.2.1", 1234))])
    assert [peer for _, peer, _ in accepted] == [("192.0.2.1", 1234)]
    first, second, third = raw.accept_times[:3]
    assert second - first == pytest.approx(ACCEPT_BACKOFF)
    assert third - second == pytest.approx(ACCEPT_BACKOFF)
    accepted[0][0].socket.close()


async def test_an_error_of_one_connection_is_skipped(autojump_clock):
    """ECONNABORTED (the peer reset while queued) and the like: the next one is accepted at once."""
    sock, _ = socket.socketpair()
    raw, accepted = await accept_from([OSError(errno.ECONNABORTED, "reset"),
                                       (sock, ("192.0.2.2", 99))])
    assert [peer for _, peer, _ in accepted] == [("192.0.2.2", 99)]
    assert raw.accept_times[1] == raw.accept_times[0]
    accepted[0][0].socket.close()


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@pytest.mark.parametrize(("code", "raised"), [(errno.EINVAL, OSError),
                                              (errno.EBADF, trio.ClosedResourceError)])
async def test_another_accept_error_stops_the_loop(code, raised):
    """EINVAL (not listening) is raised; EBADF (closed under the loop) as trio says it."""
    with pytest.raises(BaseException) as caught:
        await accept_from([OSError(code, "broken")])
    assert [type(e) for e in leaves(caught.value)] == [raised]


async def test_a_failing_loop_closes_its_listener_once():
    listener = await open_listener("127.0.0.1")
    fd = listener.socket.fileno()
    server, _ = server_recording([])

    async def broken(raw, sessions, local):
        assert raw.fileno() == fd   # the listener's own descriptor, not a copy
        raise OSError(errno.EINVAL, "broken")

    server._accept_from = broken  # type: ignore[method-assign]
    with pytest.raises(BaseException) as caught:
        async with trio.open_nursery() as sessions:
            await sessions.start(server.serve, [listener], sessions)
    assert [type(e) for e in leaves(caught.value)] == [OSError]
    assert listener.socket.fileno() == -1
    with pytest.raises(OSError) as gone:   # closed by the listener, not left to the stdlib
        socket.socket(fileno=fd).close()   # object (it was detached, so no double close)
    assert gone.value.errno == errno.EBADF


async def test_out_of_descriptors_is_logged_at_most_once_per_interval(autojump_clock, caplog,
                                                                      monkeypatch):
    """A process out of descriptors fails every ACCEPT_BACKOFF: one accept_failed line at once,
    then one per ACCEPT_FAILED_LOG_INTERVAL with the failures since the last line."""
    monkeypatch.setattr(serve, "ACCEPT_BACKOFF", 0.125)   # (exact in binary: no rounding)
    per_interval = round(serve.ACCEPT_FAILED_LOG_INTERVAL / 0.125)
    sock, _ = socket.socketpair()
    caplog.set_level("ERROR", logger="mailproxy")
    _, accepted = await accept_from([OSError(errno.EMFILE, "full")] * (2 * per_interval + 5)
                                    + [(sock, ("192.0.2.3", 7))])
    lines = [r.fields for r in caplog.records if r.getMessage() == "accept_failed"]
    assert [line["failures"] for line in lines] == [1, per_interval, per_interval]
    assert {line["reason"] for line in lines} == {"Too many open files"}
    accepted[0][0].socket.close()
