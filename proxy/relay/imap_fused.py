"""The IMAP engine session's fused step: a plain chunk of a session at rest, relayed and
accounted for in one call (issue 16).

Theory of operation: on one CPU a relayed round trip waits for the engine's whole Python run per
wake-up (bench/README.md, ninth session), and the full path of a plain chunk runs a dozen calls
(the core's `client_data`, the parser's `plain_line` and its rest checks, `Side.write`, `judge`,
`InFlight.start`, ...) each re-checking state that did not change since the last chunk. Here the
checks are made once: when the full path (`ImapEngineSession.received`) leaves the session
settled and `at_rest()` holds (the core's and both parsers' conditions, no splice, no
connection closed), it sets `sess.fused` to `FusedStep.step`; any other step clears it (the
engine's `_guarded`, `received` itself, a release). While it is set, the engine's loop hands a
plain side's chunk (and `_decrypt` a TLS side's plaintext) to `step` first, which takes it only
when it is

- from the client: one command line that `CommandParser.plain_line` would accept (the same
  regex, within `max_plain`), and not LOGOUT, IDLE or COMPRESS (the core's own handling);
- from the upstream: one tagged status line (`ResponseParser.tagged_line`'s regex, within the
  parser's `max_line`), or complete untagged lines that cannot start a literal or a
  continuation (`* 3 EXISTS`, SELECT's answer: no line ending in `}`, a name of letters; the
  relay keeps nothing of them) and at most one tagged status line after them
  (`PLAIN_ANSWER_RE`), the whole chunk within `max_line`.

It then writes the chunk on, and does what the full path would have: activity and upstream-wait
times, the command started (`pending`, `session.commands`) or completed, the connections' byte
counts (live: the admin API reads them); the chunk's size is added to a sum per direction, which
goes to the byte metrics (`ByteCounter`), the held lines' and the parser's offsets
(`pass_lines_at_rest`) when the session leaves the step (`flush`). A completion is
appended raw, (meter, label, status, duration), to the command tally's `raw` list, looked up and
counted at its next flush (a scrape, or every `CommandTally.BATCH`): the same counts and
histograms as `CommandMeter.completed`. Sessions with `audit` logging are never at rest here, so
their per-command lines stay `completed`'s. Anything else (a literal, two commands, a partial line,
a continuation, bad syntax, a chunk over a limit) returns False with nothing changed, and the
full path takes it.
A write that the kernel did not take whole, or that failed, leaves the session as the full path
would (the rest kept in `out`, or the session ended) and lets the engine fit it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..imap._lines import PLAIN_ANSWER_RE, PLAIN_COMMAND_RE, PLAIN_TAGGED_RE, TAGGED_STATUSES
from ..metrics import OTHER
from ..session.context import ByteCounter
from ..session.failures import Close
from .engine_session import Side
from .imap_core import LABELS

if TYPE_CHECKING:
    from .engine_imap import ImapEngineSession

__all__ = ["FusedStep", "at_rest"]

_command = PLAIN_COMMAND_RE.fullmatch
_tagged = PLAIN_TAGGED_RE.fullmatch
_answer = PLAIN_ANSWER_RE.fullmatch
_OWN = frozenset({b"LOGOUT", b"IDLE", b"COMPRESS"})   # judged by the core (`judge`)
_FLUSH_BYTES = ByteCounter.FLUSH_BYTES
_write, _monotonic = os.write, time.monotonic


def at_rest(sess: ImapEngineSession) -> bool:
    """`sess`, just settled by its full path, may take its next plain chunk by `step`."""
    client, upstream, core = sess.client, sess.upstream, sess.core
    return (not client.spliced and not upstream.spliced and not client.conn.closed
            and not upstream.conn.closed and core.literal_owed < sess.splice_at
            and core.at_rest())


class FusedStep:
    """One session's step, with what it touches bound once (none of it is ever replaced while
    the session is in the engine). The bytes of chunks taken whole are summed per direction
    (`up`, `down`) and added to the byte metrics, the held lines' offset and the parser's
    (`flush`) when the session leaves the step (`ImapEngineSession.unfuse`: its release, any
    other step) or a sum reaches `ByteCounter.FLUSH_BYTES`; nothing reads them in between."""

    __slots__ = ("sess", "core", "engine", "session", "client", "upstream", "client_conn",
                 "upstream_conn", "client_fd", "upstream_fd", "client_parser",
                 "upstream_parser", "held", "bytes_up", "bytes_down", "pending", "meter",
                 "tally", "raw", "max_plain", "max_answer", "up", "up_last", "down",
                 "down_last", "client_tls", "upstream_tls")

    def __init__(self, sess: ImapEngineSession):
        core = sess.core
        self.sess, self.core, self.engine, self.session = sess, core, sess.engine, core.session
        self.client, self.upstream = sess.client, sess.upstream
        self.client_conn, self.upstream_conn = sess.client.conn, sess.upstream.conn
        self.client_fd, self.upstream_fd = sess.client.fd, sess.upstream.fd
        self.client_parser, self.upstream_parser = core.client_parser, core.upstream_parser
        self.held, self.bytes_up, self.bytes_down = core.held, core.bytes_up, core.bytes_down
        self.pending = core.inflight.pending
        self.meter = core.inflight.meter
        self.tally = self.meter.metrics.command_tally
        self.raw = self.tally.raw
        self.max_plain = core.max_plain
        self.max_answer = core.upstream_parser.max_line
        self.up = self.up_last = self.down = self.down_last = 0
        # a TLS side is written through its TLSEngine (`EngineSession.send`, which counts the
        # plaintext it takes itself)
        self.client_tls = sess.client.tls is not None
        self.upstream_tls = sess.upstream.tls is not None

    def step(self, side: Side, data: bytes) -> bool:
        size = len(data)
        if side is self.client:   # -- a command (client_data, forward, judge) --------------
            if size > self.max_plain:
                return False
            match = _command(data)
            if match is None:
                return False
            tag, name, sub = match.groups()
            name = name.upper()
            if name in _OWN:
                return False
            if name == b"UID":   # (a UID without a subcommand: the parser's to answer)
                if sub is None:
                    return False
                name = b"UID " + sub.upper()
            if self.upstream_tls:
                sent = self._send_tls(self.upstream, data)
            else:
                try:
                    sent = _write(self.upstream_fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = -1
            core = self.core
            core.last_active = now = self.engine.now
            self.session.commands += 1
            pending = self.pending
            if not pending:   # (no IDLE at rest) the upstream's time to answer starts now
                core.upstream_heard = now
            pending[tag] = (LABELS.get(name, OTHER), _monotonic())
            self.client_conn.bytes_in += size   # (live: `flush`)
            if sent == size:
                if not self.upstream_tls:
                    self.upstream_conn.bytes_out += size
                self.up = up = self.up + size
                self.up_last = size
                if up >= _FLUSH_BYTES:
                    self.flush()
                return True
            self.sess.unfuse()
            self._up(size)
            return self._short(self.upstream, data, sent, Close.UPSTREAM_CLOSED)
        # -- an answer (forward, upstream_data) ----------------------------------------------
        if size > self.max_answer:   # (so each of its lines is within the parser's max_line)
            return False
        match = _tagged(data)
        if match is not None:
            last = size
        else:   # untagged lines (`* 3 EXISTS`, SELECT's answer), then at most one tagged line
            match = _answer(data)
            if match is None:
                return False
            last = size - data.rfind(b"\n", 0, size - 1) - 1   # the last line's size
        if self.client_tls:
            sent = self._send_tls(self.client, data)
        else:
            try:
                sent = _write(self.client_fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = -1
        if sent == -1:   # the full path does not parse what it could not forward
            self.sess.unfuse()
            self.upstream_conn.bytes_in += size
            return self._short(self.client, data, sent, Close.CLIENT_CLOSED)
        self.upstream_conn.bytes_in += size   # (live: `flush`)
        core = self.core
        core.upstream_heard = now = self.engine.now
        pending = self.pending
        if pending:   # answering is activity
            core.last_active = now
        tag, status = match.groups()
        entry = pending.pop(tag, None) if tag is not None else None
        if entry is not None:   # CommandMeter.completed, counted at the tally's next flush
            raw = self.raw
            raw.append((self.meter, entry[0], status if status in TAGGED_STATUSES
                        else status.upper(), _monotonic() - entry[1]))
            if len(raw) >= self.tally.BATCH:
                self.tally.flush()
        if sent == size:
            if not self.client_tls:
                self.client_conn.bytes_out += size
            self.down = down = self.down + size
            self.down_last = last
            if down >= _FLUSH_BYTES:
                self.flush()
            return True
        self.sess.unfuse()
        self._down(size, last)
        return self._short(self.client, data, sent, Close.CLIENT_CLOSED)

    def flush(self) -> None:
        """Account for the chunks summed so far, as the full path did for each. (The
        connections' byte counts are not kept aside: the admin API's `who` reads them from
        another thread while the session lives, Session.bytes_in/bytes_out.)"""
        up, down = self.up, self.down
        if up:
            self.up = 0
            self._up(up, self.up_last)
        if down:
            self.down = 0
            self._down(down, self.down_last)

    def _up(self, size: int, last: int = 0) -> None:
        """Command lines of `size` bytes read from the client and accepted (`judge`)."""
        self.held.sent += size
        self.client_parser.pass_lines_at_rest(size, last or size)
        self.bytes_up.add(size)

    def _down(self, size: int, last: int = 0) -> None:
        """Answers of `size` bytes read from the upstream and parsed (`upstream_data`), the
        last line `last` bytes (default: one line)."""
        self.bytes_down.add(size)
        self.upstream_parser.pass_lines_at_rest(size, last or size)

    def _send_tls(self, to: Side, data: bytes) -> int:
        """`data` to a TLS side: its size when all of it went out, -1 when the connection is
        gone, -2 when ciphertext waits in `to.out` (the plaintext counted either way)."""
        if not self.sess.send(to, data):
            return -1
        return -2 if to.out else len(data)

    def _short(self, to: Side, data: bytes, sent: int, reason: Close) -> bool:
        """The write to `to` failed (-1), left ciphertext in `out` (-2), or the kernel took
        `sent` bytes of `data`: as `EngineSession.send` and the full path's end of `received`
        leave it (the session has left the step), then fitted by the engine (its masks and
        timer)."""
        sess, core = self.sess, self.core
        if sent == -1:
            to.conn.closed = True
            core.finish(reason)
        elif sent >= 0:
            to.conn.bytes_out += sent
            to.out = memoryview(data)[sent:]
        if core.end is not None:
            sess.carry_on()   # (ends it)
        if not sess.done:
            engine = self.engine
            engine._interest(sess)
            if sess.due() < sess.timer_at:
                engine._schedule(sess)
        return True
