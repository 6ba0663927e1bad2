"""The relay engine's TLS wake-up (engine_loop.py `_ready` -> `_receive` -> `_decrypt`): the
session is fitted again (`_interest`, `_schedule`) after a TLS read only when something may have
moved, never after a chunk that left it settled (issue 16). Real OpenSSL engines and a real
socket pair; the session is a small fake that says what its steps did."""

from __future__ import annotations

import math
import socket
from types import SimpleNamespace

import pytest

from proxy.relay.engine_loop import EngineLoop
from proxy.relay.engine_session import IN, OUT, RECEIVE_SIZE, Side
from tests.unit.test_tls_engine import ca, connected  # noqa: F401 (ca: a fixture)


class FakeSession:
    """What `_ready` asks of a session; `fused` and `received` answer as told."""

    def __init__(self, fused: bool | None, settled: bool):
        self.fused = None if fused is None else self._fused
        self.took, self.settled = fused, settled
        self.chunks: list[tuple[str, bytes]] = []
        self.done = False
        self.timer_at = math.inf

    def _fused(self, side: Side, data: bytes) -> bool:
        self.chunks.append(("fused", data))
        return bool(self.took)

    def received(self, side: Side, data: bytes) -> bool:
        self.chunks.append(("full", data))
        return self.settled

    def due(self) -> float:
        return 0.0   # (earlier than timer_at: a fitting schedules)


@pytest.fixture
def rig(ca):  # noqa: F811 (the fixture imported above)
    server, client = connected(ca)
    near, far = socket.socketpair()
    near.setblocking(False)
    loop = EngineLoop.__new__(EngineLoop)   # (no thread, no epoll: `_ready` alone)
    loop._tls_waiting = set()
    fitted: list[str] = []
    loop._interest = lambda sess: fitted.append("interest")   # type: ignore[method-assign]
    loop._schedule = lambda sess: fitted.append("schedule")   # type: ignore[method-assign]

    def crashed(sess):
        raise AssertionError("the step raised")
    loop._crashed = crashed   # type: ignore[method-assign]

    def side_of(sess: FakeSession) -> Side:
        side = Side.__new__(Side)
        side.fd, side.tls, side.out, side.mask = near.fileno(), server, b"", IN
        side.conn = SimpleNamespace(bytes_in=0, bytes_out=0, eof=False, closed=False)
        side.session, side.read_size, side.spliced = sess, RECEIVE_SIZE, False
        return side

    def send(plaintext: bytes) -> None:
        client.write(plaintext)
        far.sendall(client.data_to_send())

    yield SimpleNamespace(loop=loop, side_of=side_of, send=send, fitted=fitted, far=far,
                          client=client)
    near.close()
    far.close()


@pytest.mark.parametrize("fused, settled, fits", [
    (True, False, False),    # the fused step took it: settled
    (False, True, False),    # the full path said settled
    (False, False, True),    # the full path did not: fitted as before
    (None, False, True),
])
def test_a_tls_read_fits_the_session_only_when_it_may_have_moved(rig, fused, settled, fits):
    sess = FakeSession(fused, settled)
    side = rig.side_of(sess)
    rig.send(b"a1 NOOP\r\n")
    rig.loop._ready(side, IN)
    assert sess.chunks[-1][1] == b"a1 NOOP\r\n"
    assert rig.fitted == (["interest", "schedule"] if fits else [])


def test_output_flushed_in_the_same_wake_up_fits_it_even_when_the_chunk_settled(rig):
    """EPOLLOUT flushed a side's rest: what the session waits for changed (it may read the
    other side again), whatever the chunk read with it did."""
    sess = FakeSession(True, True)
    side = rig.side_of(sess)
    side.out, side.mask = b"rest", IN | OUT
    rig.send(b"a1 NOOP\r\n")
    rig.loop._ready(side, IN | OUT)
    assert side.out == b"" and rig.far.recv(100).endswith(b"rest")
    assert sess.chunks == [("fused", b"a1 NOOP\r\n")]
    assert rig.fitted == ["interest", "schedule"]


def test_a_record_not_yet_whole_moves_nothing(rig):
    sess = FakeSession(True, True)
    side = rig.side_of(sess)
    rig.client.write(b"a1 NOOP\r\n")
    record = rig.client.data_to_send()
    rig.far.sendall(record[:5])
    rig.loop._ready(side, IN)
    assert sess.chunks == [] and rig.fitted == []
    rig.far.sendall(record[5:])
    rig.loop._ready(side, IN)
    assert sess.chunks == [("fused", b"a1 NOOP\r\n")] and rig.fitted == []
