"""IMAP literal payloads moved from the upstream's socket to the client's by the kernel
(os.splice through a pipe), never read into Python: the relay engine's bulk FETCH path.

Theory of operation: after an upstream chunk has been forwarded and parsed (engine_imap.py),
the response parser may be inside a literal's payload with nothing buffered
(`ImapRelayCore.literal_left`). When that many bytes are still to come, at least the session's
`relay.splice_min_literal`, both sides are plain TCP (never TLS: the bytes are ciphertext
there) and no command waits to be written upstream, the session *splices*: its sides'
readiness goes to `step` instead of the engine's reads and writes until exactly that payload
has gone through.

- One non-blocking pipe per session, made at its first splice and closed at its release;
  `splice(upstream -> pipe)` takes at most what the literal still owes and what the pipe has
  room for, then `splice(pipe -> client)` at once. Every byte taken from the upstream is told
  to the core (`upstream_passed`: the parser's count, the byte counter, the timers), so the
  core sees the response line after the payload as if it had read the payload itself.
- Back-pressure: the pipe is the only buffer (its capacity, PIPE_SIZE, is set with
  F_SETPIPE_SZ). When the kernel refuses that size (a non-root user past
  `fs.pipe-user-pages-soft`, 64 MB of pipes by default: 64 sessions that spliced, as each keeps
  its pipe, then every new pipe is 8 KB), the session does not splice: through an 8 KB pipe a
  MB of FETCH cost 1.96 ms of proxy CPU, against 0.41 ms read and written (bench/README.md).
  The upstream is read only while the pipe is empty, as the engine reads a side
  only when nothing waits to go the other way; bytes the client does not take wait in the pipe
  (EPOLLOUT on the client). A chunk still waiting in the client's `out` when the splice
  starts is written first. The client is not read during a splice (a command pipelined behind
  the FETCH waits in the kernel, as it does while a chunk waits in `out`).
- Partial splices and EAGAIN on either side just leave the counts where they are; the
  level-triggered epoll comes back. A splice of 0 bytes from the upstream (only tried with the
  pipe empty), or an error, is its end of stream mid-literal: the core ends the session as for
  any upstream end. A reset upstream while the pipe still holds bytes (EPOLLHUP/EPOLLERR, which
  epoll reports whatever the mask) ends it too; a client that is gone (a failed splice to it,
  EPOLLHUP/EPOLLERR) ends it as a failed write does.
- Reads: the engine reads RECEIVE_SIZE at a time, so a payload that begins in a read has up
  to that much of it copied through Python. After a splice the upstream's next read is
  READ_AFTER_SPLICE bytes (the line after the payload and the next response's head), so a
  run of big literals (a bulk FETCH) is spliced almost whole; a read that leaves no splice
  puts the read size back.
- Timers and the drain go on as usual: the core's `timer` and `drained` never split a literal
  (the drain's BYE waits for a boundary); a session ended mid-splice closes its pipe at its
  release (`released`), as a task path's end closes mid-literal.
"""

from __future__ import annotations

import fcntl
import os
import select
from typing import TYPE_CHECKING

from .engine_session import IN, OUT, RECEIVE_SIZE, Side

if TYPE_CHECKING:
    from .engine_imap import ImapEngineSession

__all__ = ["NEVER", "PIPE_SIZE", "Pipe", "end", "masks", "start", "step"]

PIPE_SIZE = 1024 * 1024   # /proc/sys/fs/pipe-max-size's default (root: always granted)
# the upstream's read after a splice: the line after the payload and the next response's
# head, with little of a next payload (a big one is spliced from there; else reads go back to
# RECEIVE_SIZE)
READ_AFTER_SPLICE = 8 * 1024
NEVER = 1 << 62   # a session's splice_min that no literal reaches (relay.splice_min_literal null)
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_GONE = select.EPOLLHUP | select.EPOLLERR


class Pipe:
    """A session's pipe: `held` bytes in it for the client, `left` of the literal to take."""

    __slots__ = ("read_fd", "write_fd", "size", "held", "left")

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                self.size = fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:   # (above an unprivileged process's limit: keep the default)
                self.size = fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ)
        except BaseException:   # no size at all: the pipe is not kept (`start` reads instead)
            self.close()
            raise
        self.held = 0
        self.left = 0

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def start(sess: ImapEngineSession) -> bool:
    """Splice the rest of the literal the upstream is sending, when it is worth it (see the
    module's docstring); True when the session now splices."""
    sess.splice_at = sess.splice_min
    left = sess.core.literal_left()
    client, upstream = sess.client, sess.upstream
    if left < sess.splice_min or upstream.out or client.tls is not None \
            or upstream.tls is not None:
        upstream.read_size = RECEIVE_SIZE
        return False
    if sess.pipe is None:
        try:
            pipe = Pipe()
        except OSError:   # out of descriptors: this session reads and writes as before
            sess.splice_min = sess.splice_at = NEVER
            return False
        if pipe.size < PIPE_SIZE:   # F_SETPIPE_SZ refused: not worth it (module docstring)
            pipe.close()
            sess.splice_min = sess.splice_at = NEVER
            upstream.read_size = RECEIVE_SIZE
            return False
        sess.pipe = pipe
    sess.pipe.left = left
    client.spliced = upstream.spliced = True
    return True


def step(sess: ImapEngineSession, side: Side, events: int) -> None:
    """`side` is ready while the session splices: move what can be moved."""
    pipe = sess.pipe
    assert pipe is not None
    client = sess.client
    if side is client:
        if events & _GONE and not events & OUT:
            client.conn.closed = True   # (engine_loop's `_interest` ends the session)
            return
        if client.out and not _flush(client):   # the chunk read before the splice first
            return
    elif pipe.held or client.out:   # the upstream waits (an IN of this poll: it comes again)
        if events & _GONE:   # a reset, which epoll reports while the upstream is not read
            _upstream_end(sess, side)
            return
    elif events & (IN | _GONE) and not _fill(sess, pipe, side):
        return
    if pipe.held and not client.out:
        _drain(pipe, client)
    if not pipe.left and not pipe.held:
        sess.client.spliced = sess.upstream.spliced = False   # the line after the payload
        sess.upstream.read_size = READ_AFTER_SPLICE   # is read and parsed as usual; `start`
        sess.splice_at = 0   # looks after that read whatever it left (and restores the size)


def masks(sess: ImapEngineSession) -> tuple[int, int]:
    """(client, upstream) while splicing: write out the client's chunk then the pipe's bytes,
    else read the upstream."""
    pipe = sess.pipe
    assert pipe is not None
    if pipe.held or sess.client.out:
        return OUT, 0
    return 0, IN


def _fill(sess: ImapEngineSession, pipe: Pipe, upstream: Side) -> bool:
    """Take what the upstream has of the literal into the pipe; False when the session ended."""
    try:
        moved = os.splice(upstream.fd, pipe.write_fd, min(pipe.left, pipe.size), flags=_FLAGS)
    except BlockingIOError:
        return True
    except OSError:   # reset: the same as an end of stream
        moved = 0
    if not moved:
        _upstream_end(sess, upstream)
        return False
    upstream.conn.bytes_in += moved
    pipe.left -= moved
    pipe.held += moved
    sess.core.upstream_passed(moved, sess.engine.now)
    return True


def _upstream_end(sess: ImapEngineSession, upstream: Side) -> None:
    """The upstream's end of stream mid-literal: the session ends as the core says."""
    upstream.conn.eof = True
    sess.client.spliced = sess.upstream.spliced = False
    sess.core.upstream_data(b"", sess.engine.now)
    sess.carry_on()


def _flush(client: Side) -> bool:
    """Write what waits in the client's `out` (plain); True once it is all out."""
    try:
        sent = os.write(client.fd, client.out)
    except BlockingIOError:
        return False
    except OSError:
        client.conn.closed = True
        client.out = b""
        return False
    client.conn.bytes_out += sent
    client.out = memoryview(client.out)[sent:] if sent < len(client.out) else b""
    return not client.out


def _drain(pipe: Pipe, client: Side) -> None:
    try:
        moved = os.splice(pipe.read_fd, client.fd, pipe.held, flags=_FLAGS)
    except BlockingIOError:
        return
    except OSError:   # the client is gone
        client.conn.closed = True
        return
    client.conn.bytes_out += moved
    pipe.held -= moved


def end(sess: ImapEngineSession) -> None:
    """The session is released: its pipe is closed (what it held is dropped with the
    connections, as the task path drops what it had read)."""
    pipe, sess.pipe = sess.pipe, None
    sess.client.spliced = sess.upstream.spliced = False
    if pipe is not None:
        pipe.close()

