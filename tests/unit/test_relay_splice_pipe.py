"""The relay engine's splice (proxy/relay/engine_splice.py) with the pipe the kernel gives: a
non-root process past `fs.pipe-user-pages-soft` (64 pipes of 1 MB per user) has F_SETPIPE_SZ
refused and gets 8 KB pipes. Splicing through those cost 1.96 ms of proxy CPU per MB of FETCH
against 0.41 ms reading (bench/README.md, "splice through a pipe the kernel kept small"), so
such a session reads and writes as before, keeping no pipe. A session holds a pipe only while
it splices: the engine's PipePool takes it back, empty, for the next splice."""

from __future__ import annotations

import fcntl
import os

from proxy.relay import engine_splice
from proxy.relay.engine_session import RECEIVE_SIZE


class _Core:
    def literal_left(self) -> int:
        return 1024 * 1024


class _Side:
    def __init__(self) -> None:
        self.tls, self.out, self.spliced, self.read_size = None, b"", False, 8192


class _Engine:
    def __init__(self) -> None:
        self.pipes = engine_splice.PipePool()


class _Session:
    """What engine_splice.start and end read and set of an ImapEngineSession."""

    def __init__(self, engine: _Engine | None = None) -> None:
        self.core, self.client, self.upstream = _Core(), _Side(), _Side()
        self.engine = engine or _Engine()
        self.splice_min = self.splice_at = 128 * 1024
        self.pipe = None


class _Refusing:
    """fcntl as for a user past its pipe budget: F_SETPIPE_SZ is refused (EPERM)."""

    def __getattr__(self, name: str) -> object:
        return getattr(fcntl, name)

    @staticmethod
    def fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETPIPE_SZ:
            raise PermissionError(1, "Operation not permitted")
        return fcntl.fcntl(fd, cmd, arg)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_pipe_of_the_size_asked_for_splices():
    sess = _Session()
    assert engine_splice.start(sess)
    assert sess.pipe is not None and sess.pipe.size >= engine_splice.PIPE_SIZE
    assert sess.client.spliced and sess.upstream.spliced
    engine_splice.end(sess)
    sess.engine.pipes.close()


def test_a_splice_s_pipe_goes_back_to_the_engine_and_is_reused():
    """A session holds a pipe only while it splices: `end` gives it back, empty, and the next
    splice (this session's or another's) takes the same descriptors, none made."""
    engine = _Engine()
    first, second = _Session(engine), _Session(engine)
    assert engine_splice.start(first)
    fds = (first.pipe.read_fd, first.pipe.write_fd)
    engine_splice.end(first)
    assert first.pipe is None and not first.client.spliced and not first.upstream.spliced
    before = _open_descriptors()
    assert engine_splice.start(second)
    assert (second.pipe.read_fd, second.pipe.write_fd) == fds and _open_descriptors() == before
    engine_splice.end(second)
    engine.pipes.close()
    assert _open_descriptors() == before - 2


def test_a_pipe_still_holding_bytes_is_closed_not_kept():
    engine = _Engine()
    sess = _Session(engine)
    assert engine_splice.start(sess)
    os.write(sess.pipe.write_fd, b"x" * 1000)   # (what a session ended mid-splice left)
    sess.pipe.held = 1000
    before = _open_descriptors()
    engine_splice.end(sess)
    assert engine.pipes.free == [] and _open_descriptors() == before - 2


def test_an_upstream_gone_mid_splice_is_read_to_its_end_a_whole_read_at_a_time():
    """The upstream hangs up or is reset while the pipe holds bytes for a slow client: they go
    to the client's `out`, the pipe back to the engine, and the plain path reads what the
    kernel still holds from the upstream (`_upstream_gone`) at RECEIVE_SIZE, not at the 8 KB
    (READ_AFTER_SPLICE) an earlier literal's end left: each of those reads is appended to the
    client's pending `out` (Side.write copies it), so a few MB read 8 KB at a time copied
    hundreds of MB in the engine's thread."""
    engine = _Engine()
    sess = _Session(engine)
    sess.upstream.read_size = engine_splice.READ_AFTER_SPLICE   # (after an earlier splice)
    assert engine_splice.start(sess)
    pipe = sess.pipe
    os.write(pipe.write_fd, b"x" * 5000)
    pipe.held = 5000
    engine_splice._upstream_gone(sess, pipe)
    assert bytes(sess.client.out) == b"x" * 5000 and sess.pipe is None
    assert engine.pipes.free == [pipe] and not sess.upstream.spliced
    assert sess.upstream.read_size == RECEIVE_SIZE
    engine.pipes.close()


def test_the_engine_keeps_at_most_pool_size_pipes():
    engine = _Engine()
    sessions = [_Session(engine) for _ in range(engine_splice.POOL_SIZE + 3)]
    for sess in sessions:
        assert engine_splice.start(sess)
    before = _open_descriptors()
    for sess in sessions:
        engine_splice.end(sess)
    assert len(engine.pipes.free) == engine_splice.POOL_SIZE
    assert _open_descriptors() == before - 2 * 3   # the others closed
    engine.pipes.close()
    assert _open_descriptors() == before - 2 * len(sessions)
    # a splice ending after the engine's end: its pipe is closed, not kept
    late = _Session(engine)
    late.pipe = engine_splice.Pipe()
    engine_splice.end(late)
    assert engine.pipes.free == [] and _open_descriptors() == before - 2 * len(sessions)


def test_a_pipe_the_kernel_kept_small_is_not_used(monkeypatch):
    monkeypatch.setattr(engine_splice, "fcntl", _Refusing())
    sess = _Session()
    before = _open_descriptors()
    assert not engine_splice.start(sess)
    assert sess.pipe is None and _open_descriptors() == before   # closed, not kept
    assert not sess.client.spliced and not sess.upstream.spliced
    assert sess.upstream.read_size == RECEIVE_SIZE
    # never tried again: the driver asks `start` only from `splice_at` (engine_imap.py)
    assert sess.splice_min == sess.splice_at == engine_splice.NEVER


class _Failing(_Refusing):
    """fcntl refusing both F_SETPIPE_SZ and F_GETPIPE_SZ (not seen on Linux; the pipe is made)."""

    @staticmethod
    def fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        raise OSError(22, "Invalid argument")


def test_a_pipe_whose_size_cannot_be_read_is_closed(monkeypatch):
    monkeypatch.setattr(engine_splice, "fcntl", _Failing())
    sess = _Session()
    before = _open_descriptors()
    assert not engine_splice.start(sess)   # OSError from Pipe(): reads and writes as before
    assert sess.pipe is None and _open_descriptors() == before   # both ends closed
    assert sess.splice_min == sess.splice_at == engine_splice.NEVER
