"""The relay engine's splice (proxy/relay/engine_splice.py) with the pipe the kernel gives: a
non-root process past `fs.pipe-user-pages-soft` (64 pipes of 1 MB per user: a session keeps its
pipe once it spliced) has F_SETPIPE_SZ refused and gets 8 KB pipes. Splicing through those cost
1.96 ms of proxy CPU per MB of FETCH against 0.41 ms reading (bench/README.md, "splice
through a pipe the kernel kept small"), so such a session reads and writes as before, keeping no pipe."""

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


class _Session:
    """What engine_splice.start reads and sets of an ImapEngineSession."""

    def __init__(self) -> None:
        self.core, self.client, self.upstream = _Core(), _Side(), _Side()
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
