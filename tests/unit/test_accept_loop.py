"""session/serve.py's own accept loop (ListenerServer.serve, in place of trio.serve_listeners):
out-of-descriptor errors back off and accept again, other errors stop the loop, cancellation
(drain, reload) closes the listener. A scripted listener stands in for the socket (one layer)."""

from __future__ import annotations

import errno

import pytest
import trio

from proxy.session import serve
from proxy.session.serve import ACCEPT_BACKOFF, ListenerServer


class ScriptedListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() raises or returns what the script says, then waits for ever."""

    def __init__(self, script: list[OSError | trio.abc.Stream]):
        self.script = script
        self.accept_times: list[float] = []
        self.closed = False

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.accept_times.append(trio.current_time())
        if not self.script:
            await trio.sleep_forever()
        step = self.script.pop(0)
        if isinstance(step, OSError):
            raise step
        return step

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def server_recording(into: list[trio.abc.Stream], event: trio.Event | None = None
                     ) -> ListenerServer:
    server = ListenerServer("imap", lambda: None, handler=None)  # type: ignore[arg-type]

    async def connection(stream):
        into.append(stream)
        if event is not None:
            event.set()

    server._connection = connection  # type: ignore[method-assign]
    return server


@pytest.mark.parametrize("code", sorted(serve.ACCEPT_CAPACITY_ERRNOS))
async def test_out_of_descriptors_backs_off_then_accepts_again(code, autojump_clock):
    stream = trio.testing.MemorySendStream()
    listener = ScriptedListener([OSError(code, "full"), OSError(code, "full"), stream])
    accepted: list[trio.abc.Stream] = []
    started = trio.Event()
    server = server_recording(accepted, started)
    async with trio.open_nursery() as sessions:
        await sessions.start(server.serve, [listener], sessions)
        await started.wait()
        sessions.cancel_scope.cancel()
    assert accepted == [stream]
    first, second, third = listener.accept_times[:3]
    assert second - first == pytest.approx(ACCEPT_BACKOFF)
    assert third - second == pytest.approx(ACCEPT_BACKOFF)
    assert listener.closed   # cancelled (drain, reload): the listening socket is closed


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


async def serve_until_it_fails(listener: ScriptedListener) -> list[BaseException]:
    server = server_recording([])
    with pytest.raises(BaseException) as raised:
        async with trio.open_nursery() as sessions:
            await sessions.start(server.serve, [listener], sessions)
    return leaves(raised.value)


async def test_another_accept_error_stops_the_loop_and_closes_the_listener():
    listener = ScriptedListener([OSError(errno.EBADF, "bad descriptor")])
    errors = await serve_until_it_fails(listener)
    assert [(type(e), getattr(e, "errno", None)) for e in errors] == [(OSError, errno.EBADF)]
    assert listener.closed


async def test_a_closed_listener_stops_the_loop():
    """ClosedResourceError (the listener closed under the loop) is not retried either."""

    class Closed(ScriptedListener):
        async def accept(self) -> trio.abc.Stream:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("listener closed")

    errors = await serve_until_it_fails(Closed([]))
    assert [type(e) for e in errors] == [trio.ClosedResourceError]


async def test_out_of_descriptors_is_logged_at_most_once_per_interval(autojump_clock, caplog,
                                                                      monkeypatch):
    """A process out of descriptors fails every ACCEPT_BACKOFF: one accept_failed line at once,
    then one per ACCEPT_FAILED_LOG_INTERVAL with the failures since the last line."""
    monkeypatch.setattr(serve, "ACCEPT_BACKOFF", 0.125)   # (exact in binary: no rounding)
    per_interval = round(serve.ACCEPT_FAILED_LOG_INTERVAL / 0.125)
    stream = trio.testing.MemorySendStream()
    listener = ScriptedListener([OSError(errno.EMFILE, "full")] * (2 * per_interval + 5) + [stream])
    started = trio.Event()
    server = server_recording([], started)
    caplog.set_level("ERROR", logger="mailproxy")
    async with trio.open_nursery() as sessions:
        await sessions.start(server.serve, [listener], sessions)
        await started.wait()
        sessions.cancel_scope.cancel()
    lines = [r.fields for r in caplog.records if r.getMessage() == "accept_failed"]
    assert [line["failures"] for line in lines] == [1, per_interval, per_interval]
    assert {line["reason"] for line in lines} == {"Too many open files"}
