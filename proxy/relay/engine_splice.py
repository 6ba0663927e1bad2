"""IMAP literal payloads moved from the upstream's socket to the client's by the kernel
(os.splice through a pipe), never read into Python: the relay engine's bulk FETCH path.

Theory of operation: after an upstream chunk has been forwarded and parsed (engine_imap.py),
the response parser may be inside a literal's payload with nothing buffered
(`ImapRelayCore.literal_left`). When that many bytes are still to come, at least the session's
`relay.splice_min_literal`, both sides are plain TCP (never TLS: the bytes are ciphertext
there) and no command waits to be written upstream, the session *splices*: its sides'
readiness goes to `step` instead of the engine's reads and writes until exactly that payload
has gone through.

- A pipe only while a literal goes through: taken at `start` from the engine's `PipePool`
  (empty pipes, at most POOL_SIZE kept; a new one made when none is free) and given back as
  soon as that payload is all out (`step`), or at the session's release; one still holding
  bytes (a session ended mid-splice) is closed. So the descriptors and the pipe budget held
  are those of the sessions splicing at that moment plus the pool's, never one pipe per
  session that once spliced (a non-root user's pipes count against
  `fs.pipe-user-pages-soft`: 64 pipes of 1 MB). A new pipe costs about 10 us of CPU (pipe2,
  F_SETPIPE_SZ, two closes), a pooled one nothing: bench/README.md, "splice pipes".
  `splice(upstream -> pipe)` takes at most what the literal still owes and what the pipe has
  room for, then `splice(pipe -> client)` at once. Every byte taken from the upstream is told
  to the core (`upstream_passed`: the parser's count, the byte counter, the timers), so the
  core sees the response line after the payload as if it had read the payload itself; and
  counted in `mailproxy_relay_spliced_bytes_total`.
- Back-pressure: the pipe is the only buffer (its capacity, PIPE_SIZE, is set with
  F_SETPIPE_SZ). When the kernel refuses that size (a non-root user past
  `fs.pipe-user-pages-soft`), the session does not splice: through an 8 KB pipe a
  MB of FETCH cost 1.96 ms of proxy CPU, against 0.41 ms read and written (bench/README.md).
  The upstream is read only while the pipe is empty, as the engine reads a side
  only when nothing waits to go the other way; bytes the client does not take wait in the pipe
  (EPOLLOUT on the client). A chunk still waiting in the client's `out` when the splice
  starts is written first. The client is not read during a splice (a command pipelined behind
  the FETCH waits in the kernel, as it does while a chunk waits in `out`).
- Partial splices and EAGAIN on either side just leave the counts where they are; the
  level-triggered epoll comes back. A splice of 0 bytes from the upstream (only tried with the
  pipe empty), or an error, is its end of stream mid-literal: the core ends the session as for
  any upstream end. An upstream that hangs up or is reset while the pipe holds bytes
  (EPOLLHUP/EPOLLERR, which epoll reports whatever the mask) stops the splice
  (`_upstream_gone`): the pipe's bytes go to the client's `out` (PIPE_SIZE at most, read once)
  and the plain path goes on: it reads the upstream to its end (the kernel's rest first) and
  the session ends as for a plain read, its task writing what the client has not taken. So
  the client gets every byte the upstream sent before its end. A client that is gone (a
  failed splice to it, EPOLLHUP/EPOLLERR) ends the session as a failed write does.
- Reads: the engine reads RECEIVE_SIZE at a time, so a payload that begins in a read has up
  to that much of it copied through Python. After a splice the upstream's next read is
  READ_AFTER_SPLICE bytes (the line after the payload and the next response's head), so a
  run of big literals (a bulk FETCH) is spliced almost whole; a read that leaves no splice
  puts the read size back.
- Timers and the drain go on as usual: the core's `timer` and `drained` never split a literal
  (the drain's BYE waits for a boundary); a session ended mid-splice (a kick, a timeout, the
  client gone) closes its pipe at its release (`released`), what it held dropped as a task
  path's end drops what it had read.
"""

from __future__ import annotations

import fcntl
import os
import select
from typing import TYPE_CHECKING

from .engine_session import IN, OUT, RECEIVE_SIZE, Side

if TYPE_CHECKING:
    from .engine_imap import ImapEngineSession

__all__ = ["NEVER", "PIPE_SIZE", "POOL_SIZE", "Pipe", "PipePool", "end", "masks", "start",
           "step"]

PIPE_SIZE = 1024 * 1024   # /proc/sys/fs/pipe-max-size's default (root: always granted)
# the upstream's read after a splice: the line after the payload and the next response's
# head, with little of a next payload (a big one is spliced from there; else reads go back to
# RECEIVE_SIZE)
READ_AFTER_SPLICE = 8 * 1024
# empty pipes an engine keeps for its next splices: 8 descriptors and 4 MB of the user's pipe
# budget at most, for a new pipe's ~10 us saved per spliced literal (bench/README.md)
POOL_SIZE = 4
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


class PipePool:
    """An engine's empty pipes (POOL_SIZE at most), taken by a splice and given back at its
    end; under the engine's lock. Closed at the engine's end: a pipe given back after that is
    closed."""

    __slots__ = ("free", "closed")

    def __init__(self) -> None:
        self.free: list[Pipe] = []
        self.closed = False

    def take(self) -> Pipe:
        """An empty pipe (OSError: none could be made)."""
        return self.free.pop() if self.free else Pipe()

    def give(self, pipe: Pipe) -> None:
        """Keep `pipe` for a next splice when it is empty and there is room, else close it."""
        if pipe.held or self.closed or len(self.free) >= POOL_SIZE:
            pipe.close()
        else:
            pipe.left = 0
            self.free.append(pipe)

    def close(self) -> None:
        self.closed = True
        free, self.free = self.free, []
        for pipe in free:
            pipe.close()


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
    try:
        pipe = sess.engine.pipes.take()
    except OSError:   # out of descriptors: this session reads and writes as before
        sess.splice_min = sess.splice_at = NEVER
        return False
    if pipe.size < PIPE_SIZE:   # F_SETPIPE_SZ refused: not worth it (module docstring)
        pipe.close()
        sess.splice_min = sess.splice_at = NEVER
        upstream.read_size = RECEIVE_SIZE
        return False
    sess.pipe = pipe
    pipe.left = left
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
        if events & _GONE:   # a hang-up or reset, which epoll reports while it is not read
            _upstream_gone(sess, pipe)
            return
    elif events & (IN | _GONE) and not _fill(sess, pipe, side):
        return
    if pipe.held and not client.out:
        _drain(pipe, client)
    if not pipe.left and not pipe.held:
        end(sess)   # (the pipe back to the pool) the line after the payload is read and
        sess.upstream.read_size = READ_AFTER_SPLICE   # parsed as usual; `start` looks after
        sess.splice_at = 0   # that read whatever it left (and restores the size)


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
    sess.session.runtime.metrics.relay_spliced_bytes.inc(moved)
    return True


def _upstream_end(sess: ImapEngineSession, upstream: Side) -> None:
    """The upstream's end of stream mid-literal: the session ends as the core says."""
    upstream.conn.eof = True
    sess.client.spliced = sess.upstream.spliced = False
    sess.core.upstream_data(b"", sess.engine.now)
    sess.carry_on()


def _upstream_gone(sess: ImapEngineSession, pipe: Pipe) -> None:
    """The upstream hung up or was reset while the pipe holds bytes for the client: those go
    to the client's `out` and the plain path reads the upstream to its end (module docstring);
    this session splices no more."""
    rest = bytearray(sess.client.out)
    while pipe.held:
        chunk = os.read(pipe.read_fd, pipe.held)
        if not chunk:   # (cannot be: `held` counts what is in the pipe)
            break
        rest += chunk
        pipe.held -= len(chunk)
    sess.client.out = rest
    sess.splice_min = sess.splice_at = NEVER
    # the kernel's rest read a whole read at a time, not READ_AFTER_SPLICE's 8 KB: each read
    # is appended to the client's pending `out`, which Side.write copies
    sess.upstream.read_size = RECEIVE_SIZE
    end(sess)


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
    """The session splices no more (its literal is through, or it is released): its pipe goes
    back to the engine's pool, or is closed if it still holds bytes (dropped with the
    connections, as the task path drops what it had read)."""
    pipe, sess.pipe = sess.pipe, None
    sess.client.spliced = sess.upstream.spliced = False
    if pipe is not None:
        sess.engine.pipes.give(pipe)

