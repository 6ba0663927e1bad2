"""The IMAP engine session's fused step (proxy/relay/imap_fused.py) against its full path: the
same chunks, one session taking them as the engine's loop does (the fused step first while the
session is at rest) and one always by `received`, over real socket pairs; every byte relayed,
the core's and parsers' state after each chunk, and the commands counted must be the same.
The engine is a small fake (its clock and what the session calls of it); the core, parsers,
session and metrics are real."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
from test_relay_core import counted, imap_core

from proxy.relay.engine_imap import ImapEngineSession
from proxy.session.failures import Close


class FakeEngine:
    """What an engine session asks of its engine in these steps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.fitted = 0

    def release(self, sess: Any) -> None:
        sess.done = True
        if sess.fused is not None:
            sess.unfuse()

    def _interest(self, sess: Any) -> None:
        self.fitted += 1

    def _schedule(self, sess: Any) -> None:
        pass


def fake_conn() -> SimpleNamespace:
    return SimpleNamespace(stream=None, bytes_in=0, bytes_out=0, closed=False, eof=False)


class Rig:
    """An ImapEngineSession between two socket pairs: `client` and `upstream` are the far ends."""

    def __init__(self, leftover: bytes = b"") -> None:
        self.core, self.metrics = imap_core(leftover, bad_commands=100)
        self.client, near_client = socket.socketpair()
        self.upstream, near_upstream = socket.socketpair()
        self.near = (near_client, near_upstream)
        for sock in (self.client, self.upstream, near_client, near_upstream):
            sock.setblocking(False)
        self.engine = FakeEngine()
        self.sess = ImapEngineSession(self.core, b"", self.engine,  # type: ignore[arg-type]
                                      fake_conn(), near_client.fileno(),  # type: ignore[arg-type]
                                      fake_conn(), near_upstream.fileno())  # type: ignore[arg-type]
        self.fused = 0
        self.sess.start()   # (what the engine does first: at rest after the login, the step)

    def close(self) -> None:
        for sock in (self.client, self.upstream, *self.near):
            sock.close()

    def feed(self, from_client: bool, data: bytes, fused: bool) -> None:
        """The engine loop's plain-side step (engine_loop.py `_loop`), the fused step first
        when `fused`."""
        sess = self.sess
        self.engine.now += 1.0
        side = sess.client if from_client else sess.upstream
        step = sess.fused
        if fused and step is not None and step(side, data):
            self.fused += 1
            return
        side.conn.bytes_in += len(data)
        if not data:
            side.conn.eof = True
        if not sess.received(side, data) and not sess.done:
            self.engine.fitted += 1

    def state(self, flush: bool = True) -> tuple[object, ...]:
        """What went where, and everything the full path keeps about it (with `flush`, the
        fused step's sums accounted for, as when the session leaves it)."""
        core, sess = self.core, self.sess
        if flush:
            sess.fuse.flush()
        got = []
        for sock in (self.upstream, self.client):
            try:
                got.append(sock.recv(65536))
            except BlockingIOError:
                got.append(b"")
        pending = sorted((tag, label) for tag, (label, _) in core.inflight.pending.items())
        return (*got, pending, core.session.commands, core.last_active, core.upstream_heard,
                core.held.sent, core.client_parser._buf.consumed,
                core.client_parser._buf.last_line_at, core.upstream_parser._buf.consumed,
                core.upstream_parser._buf.last_line_at, core.bytes_up.pending,
                core.bytes_down.pending, sess.client.conn.bytes_in, sess.client.conn.bytes_out,
                sess.upstream.conn.bytes_in, sess.upstream.conn.bytes_out, core.end, sess.done,
                self.engine.fitted, core.inflight.idle_tag)


# plain lines (several names, cases, UID), then what the fused step must leave to the full path:
# a refused line, a literal, two lines in one chunk, a line cut in two, a line over max_line (64),
# IDLE and DONE, then plain lines again, LOGOUT last
CHUNKS = [b"a1 NOOP\r\n", b"a2 uid fetch 1:* (FLAGS)\r\n", b"a3 select INBOX\r\n",
          b"a4 NOOP\r\n", b"(x NOOP\r\n", b"a5 UID\r\n", b"a6 NOOP\r\n",
          b"a7 APPEND x {3}\r\n", b"abc\r\n", b"a8 SELECT " + b"x" * 70 + b"\r\n",
          b"b1 NOOP\r\nb2 NOOP\r\n", b"b3 NO", b"OP\r\n", b"b4 IDLE\r\n", b"DONE\r\n",
          b"c1 CAPABILITY\r\n", b"c2 Noop\r\n", b"c3 STATUS x (MESSAGES)\r\n", b"c4 LOGOUT\r\n"]


# what comes before a tagged answer (in its chunk; the fourth: in a chunk of its own): nothing,
# an untagged line, SELECT's kind of answer, an untagged line alone, and what the fused step
# leaves to the full path: a literal, a continuation, untagged lines over max_line (64) together
BEFORE = [b"", b"* 1 EXISTS\r\n", b"* FLAGS (\\Seen)\r\n* 2 EXISTS\r\n* OK [UIDNEXT 3] x\r\n",
          b"* 3 EXISTS\r\n", b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n", b"+ more\r\n",
          b"* 4 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 1] first unseen\r\n* 1 FETCH (FLAGS ())\r\n"]


def outcome(fused: bool) -> tuple[list[tuple[object, ...]], list[object], int]:
    """Per chunk and per answer: the state; then the commands counted; and how many chunks
    the fused step took. Answers: a tagged line (some lower case), alone or after what
    `BEFORE` lists."""
    rig = Rig()
    try:
        states = []
        n = 0
        for chunk in CHUNKS:
            rig.feed(True, chunk, fused)
            states.append(rig.state())
            if chunk == b"b4 IDLE\r\n":
                rig.feed(False, b"+ idling\r\n", fused)
                states.append(rig.state())
                continue
            for tag in sorted(rig.core.inflight.pending):
                if tag == rig.core.inflight.idle_tag:
                    continue
                n += 1
                answer = b"%s %s done\r\n" % (tag, [b"OK", b"no", b"BAD", b"OK"][n % 4])
                before = BEFORE[n % len(BEFORE)]
                if before == b"* 3 EXISTS\r\n":   # (a chunk of untagged lines alone)
                    rig.feed(False, before, fused)
                    states.append(rig.state())
                    before = b""
                rig.feed(False, before + answer, fused)
                states.append(rig.state())
        durations = sorted(
            (s.labels["command"], s.value) for family in rig.metrics.registry.collect()
            if family.name == "mailproxy_command_duration_seconds"
            for s in family.samples if s.name.endswith("_count"))
        return states, [counted(rig.metrics), durations], rig.fused
    finally:
        rig.close()


def test_the_fused_step_relays_and_counts_as_the_full_path():
    fused_states, fused_counts, taken = outcome(True)
    full_states, full_counts, none = outcome(False)
    assert none == 0 and taken >= 15   # (so the comparison compares the fused step)
    assert fused_states == full_states
    assert fused_counts == full_counts
    assert {status for _, _, status, _ in full_counts[0]} == {"OK", "NO", "BAD"}  # type: ignore


def test_chunks_the_fused_step_leaves_to_the_full_path():
    """A literal, two lines, a partial line, a line over the limit, IDLE, LOGOUT; answers with
    a literal (any kind), a continuation, a bare LF, a partial line, two tagged lines, over
    the limit: never taken (the session is at rest before each). Untagged lines alone or
    before one tagged line are."""
    for chunk in (b"a7 APPEND x {3}\r\n", b"b1 NOOP\r\nb2 NOOP\r\n", b"b3 NO",
                  b"a8 SELECT " + b"x" * 70 + b"\r\n", b"b4 IDLE\r\n", b"c4 LOGOUT\r\n",
                  b"c5 COMPRESS DEFLATE\r\n", b"a5 UID\r\n"):
        rig = Rig()
        try:
            rig.feed(True, b"a1 NOOP\r\n", True)
            rig.feed(False, b"a1 OK done\r\n", True)
            assert rig.sess.fused is not None   # at rest
            before = rig.fused
            rig.feed(True, chunk, True)
            assert rig.fused == before, chunk
        finally:
            rig.close()
    for answer in (b"* 1 FETCH (BODY[] {3}\r\n", b"* 1 FETCH (BODY[] {3+}\r\n",
                   b"* 1 FETCH (BODY[] ~{3}\r\n", b"* OK x}\r\n", b"+ go\r\n",
                   b"* 1 EXISTS\na1 OK done\r\n", b"* 1 EXISTS\r\n* 2 EXISTS",
                   b"* 1 EXISTS\r\na1 OK done\r\na2 OK done\r\n",
                   b"* 1 EXISTS\r\n" * 5 + b"a1 OK done\r\n"):   # (over max_line, 64)
        rig = Rig()
        try:
            rig.feed(True, b"a1 NOOP\r\n", True)   # (at rest since `start`: both taken)
            rig.feed(True, b"a2 NOOP\r\n", True)
            assert rig.fused == 2 and rig.sess.fused is not None
            rig.feed(False, answer, True)
            assert rig.fused == 2, answer
        finally:
            rig.close()
    rig = Rig()
    try:
        rig.feed(True, b"a1 NOOP\r\n", True)
        rig.feed(True, b"a2 NOOP\r\n", True)
        for answer in (b"* 1 EXISTS\r\n", b"* 2 EXISTS\r\n* 1 RECENT\r\na1 OK done\r\n",
                       b"* OK [ALERT] x\r\n* 3 Expunge\r\na2 ok done\r\n"):
            rig.feed(False, answer, True)
        assert rig.fused == 5 and not rig.core.inflight.pending
    finally:
        rig.close()


@pytest.mark.parametrize("answer", [b"* 3\r\na1 OK done\r\n", b"* 123\r\na1 OK done\r\n",
                                    b"* \r\na1 OK done\r\n", b"*  EXISTS\r\na1 OK done\r\n"])
def test_an_untagged_line_the_parser_refuses_is_left_to_the_full_path(answer):
    """The full path ends the session (upstream protocol error, BYE); so must the engine's loop
    with the fused step first."""
    def ended(fused: bool) -> tuple[object, ...]:
        rig = Rig()
        try:
            rig.feed(True, b"a1 NOOP\r\n", fused)
            rig.feed(True, b"a2 NOOP\r\n", fused)
            rig.feed(False, answer, fused)
            return (rig.core.end, *rig.state(), rig.fused)
        finally:
            rig.close()
    fused, full = ended(True), ended(False)
    assert fused[-1] == 2 and full[-1] == 0
    assert fused[:-1] == full[:-1]
    assert full[0] is Close.UPSTREAM_PROTOCOL_ERROR


def test_a_write_upstream_that_fails_ends_the_session_as_the_full_path_does():
    def ended(fused: bool) -> tuple[object, ...]:
        rig = Rig()
        try:
            rig.feed(True, b"a1 NOOP\r\n", fused)
            rig.feed(False, b"a1 OK done\r\n", fused)
            rig.upstream.close()   # the upstream is gone: the next write fails (EPIPE)
            rig.feed(True, b"a2 NOOP\r\n", fused)
            core = rig.core
            return (core.end, rig.sess.done, core.session.commands, core.bytes_up.pending,
                    sorted(core.inflight.pending), rig.sess.upstream.conn.closed, rig.fused)
        finally:
            rig.close()
    fused, full = ended(True), ended(False)
    assert fused[-1] == 3 and full[-1] == 0   # (the failed write was the fused step's)
    assert fused[:-1] == full[:-1]


def test_the_fused_steps_sums_are_accounted_for_when_the_session_leaves_it():
    """Many chunks taken, then one for the full path (`received` leaves the step first) and a
    timer's step (the engine's `_guarded`: `unfuse`): the same state as the full path's."""
    def run(fused: bool) -> tuple[object, ...]:
        rig = Rig()
        try:
            for n in range(12):
                rig.feed(True, b"a%d NOOP\r\n" % n, fused)
                rig.feed(False, b"a%d OK done %s\r\n" % (n, b"x" * n), fused)
            taken = rig.fused
            rig.feed(True, b"b1 NOOP\r\nb2 NOOP\r\n", fused)
            after_full = rig.state(flush=False)
            rig.feed(False, b"b1 OK\r\n", fused)
            rig.feed(False, b"b2 OK\r\n", fused)
            for n in range(5):
                rig.feed(True, b"c%d NOOP\r\n" % n, fused)
                rig.feed(False, b"c%d OK\r\n" % n, fused)
            if rig.sess.fused is not None:
                rig.sess.unfuse()
            return taken, after_full, rig.state(flush=False), counted(rig.metrics)
        finally:
            rig.close()
    fused, full = run(True), run(False)
    assert fused[0] >= 22 and full[0] == 0
    assert fused[1:] == full[1:]


def test_the_session_byte_counts_stay_live_while_the_step_takes_chunks():
    """The connections' byte counts (Session.bytes_in/bytes_out) are read from another thread
    while the session lives (the admin API's `who`): each chunk the fused step takes is in them
    at once, as on the full path, not only when the session leaves the step (b7be4b8 kept them
    aside with the parser's offsets: `who` showed a NOOP-polling session's bytes frozen)."""
    def counts(fused: bool) -> list[tuple[int, int, int, int]]:
        rig = Rig()
        try:
            seen = []
            for n in range(6):
                rig.feed(True, b"a%d NOOP\r\n" % n, fused)
                rig.feed(False, b"a%d OK done\r\n" % n, fused)
                client, upstream = rig.sess.client.conn, rig.sess.upstream.conn
                seen.append((client.bytes_in, client.bytes_out, upstream.bytes_in,
                             upstream.bytes_out))
            assert (rig.fused >= 10) is fused and rig.sess.fused is not None
            return seen
        finally:
            rig.close()
    assert counts(True) == counts(False)


def test_commands_pipelined_behind_the_login_then_the_step_as_the_full_path():
    """`start` forwards what the login left (a partial line too) and leaves the session at
    rest only when it is: the same state either way."""
    def run(fused: bool) -> tuple[object, ...]:
        rig = Rig(b"p1 NOOP\r\np2 SELECT x\r\np3 NO")
        try:
            states = [rig.state(), rig.sess.fused is not None]
            for chunk in (b"OP\r\n", b"a1 NOOP\r\n"):
                rig.feed(True, chunk, fused)
                states.append(rig.state())
            for answer in (b"p1 OK\r\n", b"* 2 EXISTS\r\np2 OK\r\n", b"p3 OK\r\n",
                           b"a1 OK\r\n"):
                rig.feed(False, answer, fused)
                states.append(rig.state())
            return (*states, counted(rig.metrics), rig.fused)
        finally:
            rig.close()
    fused, full = run(True), run(False)
    assert fused[1] is False   # (a line part held: not at rest)
    assert fused[-1] >= 4 and full[-1] == 0
    assert fused[:-1] == full[:-1]
