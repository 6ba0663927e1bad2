"""The relay cores (proxy/relay/imap_core.py, pop3_core.py) alone: bytes in, what to send
where out, with a real Session and a fresh metrics registry (no sockets, no trio). Both drivers
(the trio pumps and the epoll engine) only move what these return, so what is proven here holds
for both; tests/integration runs the drivers against Dovecot."""

from __future__ import annotations

import itertools
import json

import pytest

from proxy.config import loads
from proxy.imap import NEED_DATA
from proxy.imap import CommandParser as ImapCommands
from proxy.imap import Limits as ImapLimits
from proxy.imap import ResponseParser as ImapResponses
from proxy.metrics import Metrics
from proxy.pop3 import CommandParser as Pop3Commands
from proxy.pop3 import Limits as Pop3Limits
from proxy.pop3 import ResponseParser as Pop3Responses
from proxy.relay.imap_core import ImapRelayCore
from proxy.relay.pop3_core import Pop3RelayCore
from proxy.session.context import Runtime, Session
from proxy.session.failures import Close

IDLE, UPSTREAM_RESPONSE = 1800.0, 60.0


def session(protocol: str, bad_commands: int = 3) -> tuple[Session, Metrics]:
    port = {"imap": 143, "pop3": 110}[protocol]
    config = loads(json.dumps({
        "listeners": [{"name": "l", "protocol": protocol, "address": "127.0.0.1:0",
                       "limits": {"bad_commands": bad_commands, "max_line": 64},
                       "timeouts": {"idle": f"{IDLE:g}s",
                                    "upstream_response": f"{UPSTREAM_RESPONSE:g}s"}}],
        "upstreams": {"up": {"host": "192.0.2.1", protocol: {"port": port, "tls": "none"}}},
        "routes": [{"match": "*", "upstream": "up"}],
    }))
    metrics = Metrics()
    runtime = Runtime.build(config, metrics)
    return Session(runtime, config.listeners[0], "127.0.0.1", 40000, "127.0.0.1", port), metrics


def commands(metrics: Metrics, protocol: str, command: str, status: str) -> float | None:
    return metrics.registry.get_sample_value(
        "mailproxy_commands_total", {"protocol": protocol, "command": command, "status": status})


def counted(metrics: Metrics) -> list[tuple[str, str, str, float]]:
    """Every command counted, as /metrics shows it (the registry's collect flushes the tally)."""
    return sorted((s.labels["protocol"], s.labels["command"], s.labels["status"], s.value)
                  for family in metrics.registry.collect() if family.name == "mailproxy_commands"
                  for s in family.samples if s.name.endswith("_total") and s.value)


def imap_core(leftover: bytes = b"", bad_commands: int = 3) -> tuple[ImapRelayCore, Metrics]:
    sess, metrics = session("imap", bad_commands)
    responses = ImapResponses(ImapLimits(max_line=64, max_literal=1000))
    responses.receive_data(b"* OK hi\r\na0 OK logged in\r\n")   # (the login's, done)
    while responses.next_event() is not NEED_DATA:
        pass
    core = ImapRelayCore(sess, ImapCommands(ImapLimits(max_line=64, max_literal=1000)),
                         responses, leftover, now=0.0)
    return core, metrics


# -- IMAP -----------------------------------------------------------------------------------

def test_imap_a_complete_command_is_forwarded_as_received_and_its_answer_counted():
    core, metrics = imap_core()
    chunk = b"a1 NOOP\r\n"
    assert core.client_data(chunk, 1.0) is chunk   # the fast path: the very bytes, no copy
    assert core.inflight.owed() and core.session.commands == 1
    assert core.upstream_data(b"a1 OK NOOP done\r\n", 2.0) == b""
    assert not core.inflight.owed() and core.take_replies() == b"" and core.end is None
    assert commands(metrics, "imap", "NOOP", "OK") == 1


GOOD = b"a1 NOOP\r\nA2 APPEND x {3}\r\nabc\r\n"


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_imap_a_refused_command_is_answered_bad_and_never_forwarded(size):
    """RFC 3501 7.1.3: the tagged BAD comes from the proxy, the good commands around it go
    upstream unchanged, however the input is cut."""
    core, metrics = imap_core()
    wire = GOOD + b"(x NOOP\r\n" + GOOD
    up, replies = bytearray(), bytearray()
    for start in range(0, len(wire), size):
        up += core.client_data(wire[start:start + size], 1.0)
        replies += core.take_replies()
    assert (bytes(up), bytes(replies)) == (GOOD + GOOD, b"* BAD [CLIENTBUG] Invalid tag\r\n")
    assert core.bad == 1 and core.end is None
    assert metrics.registry.get_sample_value(
        "mailproxy_protocol_errors_total", {"protocol": "imap", "kind": "bad_syntax"}) == 1


def test_imap_a_bad_answer_waits_for_the_end_of_the_upstream_response():
    core, _ = imap_core()
    core.client_data(b"a1 FETCH 1 BODY[]\r\n", 1.0)
    core.upstream_data(b"* 1 FETCH (BODY[] {10}\r\n01234", 2.0)   # mid-literal
    assert core.client_data(b"a3\r\n", 3.0) == b"" and core.take_replies() == b""
    core.upstream_data(b"56789", 4.0)
    assert core.take_replies() == b""
    core.upstream_data(b")\r\n", 5.0)   # the untagged response ends: a boundary
    assert core.take_replies() == b"a3 BAD [CLIENTBUG] Missing command name\r\n"


def test_imap_too_many_bad_commands_end_the_session():
    core, metrics = imap_core(bad_commands=2)
    core.client_data(b"(x\r\n", 1.0)
    assert core.end is None
    core.client_data(b"a1 NOOP\r\n(y\r\n", 1.0)
    assert core.take_replies() == (b"* BAD [CLIENTBUG] Invalid tag\r\n" * 2
                                   + b"* BYE Too many invalid commands.\r\n")
    assert core.end is Close.BAD_COMMANDS and core.session.close_reason is Close.BAD_COMMANDS
    assert metrics.registry.get_sample_value(
        "mailproxy_limit_hits_total", {"limit": "bad_commands"}) == 1


def test_imap_commands_pipelined_behind_the_login_are_judged_first():
    core, _ = imap_core(leftover=b"a1 NOOP\r\na2 SEL")
    assert bytes(core.client_input()) == b"a1 NOOP\r\n"
    assert bytes(core.client_data(b"ECT INBOX\r\n", 1.0)) == b"a2 SELECT INBOX\r\n"


def test_imap_idle_and_done():
    core, metrics = imap_core()
    core.client_data(b"a1 IDLE\r\n", 1.0)
    assert core.inflight.idle_tag == b"a1" and not core.inflight.owed()
    core.upstream_data(b"+ idling\r\n", 2.0)
    assert bytes(core.client_data(b"DONE\r\n", 3.0)) == b"DONE\r\n"
    core.upstream_data(b"a1 OK IDLE done\r\n", 4.0)
    assert commands(metrics, "imap", "IDLE", "OK") == 1


def test_imap_timers():
    core, _ = imap_core()
    core.client_data(b"a1 NOOP\r\n", 10.0)
    assert core.due() == 10.0 + UPSTREAM_RESPONSE
    core.timer(10.0 + UPSTREAM_RESPONSE)
    assert core.take_replies() == b"* BYE Upstream server not responding.\r\n"
    assert core.end is Close.UPSTREAM_TIMEOUT
    core, _ = imap_core()
    core.client_data(b"a1 NOOP\r\n", 10.0)
    core.upstream_data(b"a1 OK\r\n", 11.0)
    assert core.due() == 11.0 + UPSTREAM_RESPONSE
    core.timer(11.0 + UPSTREAM_RESPONSE)   # nothing owed: the upstream's timer restarts
    assert core.end is None and core.due() == 11.0 + 2 * UPSTREAM_RESPONSE
    core.timer(11.0 + IDLE)   # answering was activity: idle counts from 11.0
    assert core.take_replies() == b"* BYE Autologout; idle for too long.\r\n"
    assert core.end is Close.IDLE_TIMEOUT


def test_imap_drain_says_bye_once_nothing_is_owed():
    core, _ = imap_core()
    core.client_data(b"a1 NOOP\r\n", 1.0)
    core.drained()
    assert core.end is None and core.take_replies() == b""
    core.upstream_data(b"a1 OK\r\n", 2.0)
    assert core.take_replies() == b"* BYE Server shutting down.\r\n"
    assert core.end is Close.SHUTDOWN


def test_imap_ends():
    core, _ = imap_core()
    core.client_data(b"a1 LOGOUT\r\n", 1.0)
    core.upstream_data(b"* BYE bye\r\na1 OK\r\n", 2.0)
    core.upstream_data(b"", 3.0)
    assert core.end is Close.CLIENT_LOGOUT
    core, _ = imap_core()
    core.upstream_data(b"a1 NONSENSE\r\n", 1.0)
    assert core.take_replies() == b"* BYE Upstream protocol error.\r\n"
    assert core.end is Close.UPSTREAM_PROTOCOL_ERROR
    core, _ = imap_core()
    assert core.client_data(b"", 1.0) == b"" and core.end is Close.CLIENT_CLOSED


def test_imap_compress_stops_at_the_command_until_the_verdict():
    core, _ = imap_core()
    up = core.client_data(b"a1 COMPRESS DEFLATE\r\n\x01\x02", 1.0)
    assert bytes(up) == b"a1 COMPRESS DEFLATE\r\n"
    assert core.compress is not None and core.compress.after == b"\x01\x02"
    assert core.upstream_data(b"a1 OK DEFLATE active\r\n\x03\x04", 2.0) == b"\x03\x04"
    assert core.compressed and core.compress.ok


# -- POP3 -----------------------------------------------------------------------------------

def pop3_core() -> tuple[Pop3RelayCore, Metrics]:
    sess, metrics = session("pop3")
    return Pop3RelayCore(sess, Pop3Commands(Pop3Limits(max_command_line=255)),
                         [b"USER", b"UIDL"], now=0.0), metrics


def test_pop3_a_retr_body_passes_across_chunks_and_is_counted_once():
    core, metrics = pop3_core()
    assert bytes(core.client_data(b"RETR 1\r\n", 1.0)) == b"RETR 1\r\n"
    for chunk in (b"+OK 20 octets\r\nline one\r\n", b"..dot\r\n.", b"\r", b"\n"):
        assert core.upstream_data(chunk, 2.0) == b""
        assert commands(metrics, "pop3", "RETR", "+OK") == (1 if chunk == b"\n" else None)
    assert not core.pending and core.end is None


def test_pop3_local_answers_keep_the_order_of_pipelined_commands():
    """RFC 2449 6.6: a CAPA behind a STAT is answered after the STAT's answer; the commands
    behind the CAPA wait with it, then go upstream."""
    core, metrics = pop3_core()
    up = core.client_data(b"USER x\r\nSTAT\r\nCAPA\r\nLIST 1\r\nNOOP\r\n", 1.0)
    assert bytes(up) == b"STAT\r\n"
    assert core.take_replies() == b"-ERR Already authenticated.\r\n"
    assert core.waiting is not None   # the driver stops reading the client
    up = core.upstream_data(b"+OK 2 320\r\n", 2.0)
    assert core.take_replies() == b"+OK Capability list follows\r\nUSER\r\nUIDL\r\n.\r\n"
    assert bytes(up) == b"LIST 1\r\nNOOP\r\n" and core.waiting is None
    assert commands(metrics, "pop3", "STAT", "+OK") == 1
    assert commands(metrics, "pop3", "CAPA", "+OK") == 1


def test_pop3_timer_drain_and_ends():
    core, _ = pop3_core()
    core.client_data(b"STAT\r\n", 5.0)
    core.drained()
    assert core.end is None
    core.upstream_data(b"+OK 0 0\r\n", 6.0)
    assert core.end is Close.SHUTDOWN
    core, metrics = pop3_core()
    core.timer(IDLE - 1)
    assert core.end is None
    core.timer(IDLE)
    assert core.end is Close.IDLE_TIMEOUT and core.take_replies() == b""   # RFC 1939 3: no word
    core, _ = pop3_core()
    core.client_data(b"QUIT\r\n", 1.0)
    core.upstream_data(b"+OK bye\r\n", 2.0)
    core.upstream_data(b"", 3.0)
    assert core.end is Close.CLIENT_LOGOUT


# -- forward first (the engine): the same outcome, with the parse after the write ---------------

IMAP_LINES = [b"a1 NOOP\r\n", b"a2 UID FETCH 1:* (FLAGS)\r\n", b"a3 select INBOX\r\n",
              b"(x NOOP\r\n", b"a4\r\n", b"a5 UID\r\n", b"a6 UID  FETCH 1\r\n", b"a7 N\x00OP\r\n",
              b"a8 APPEND x {3}\r\n", b"abc\r\n", b"a9 SELECT " + b"x" * 70 + b"\r\n",
              b"b1 NOOP\r\nb2 NOOP\r\n", b"b3 NO", b"OP\r\n", b"b4 IDLE\r\n", b"DONE\r\n",
              b"b5 LOGOUT\r\n"]


def imap_outcome(forward_first: bool) -> list[tuple[bytes, bytes, int, list[bytes]]]:
    """Per chunk: what goes upstream, the proxy's replies, commands counted, tags in flight."""
    core, _ = imap_core(bad_commands=100)
    out = []
    for chunk in IMAP_LINES:
        up = bytes(core.client_data(chunk, 1.0, forward_first=forward_first))
        core.judge()
        out.append((up, core.take_replies(), core.session.commands, sorted(core.inflight.pending)))
        if chunk == b"b4 IDLE\r\n":
            core.upstream_data(b"+ idling\r\n", 2.0)
    return out


def test_imap_forward_first_changes_nothing_but_when_the_parse_happens():
    """A chunk goes up before it is parsed only when the parser is sure to accept it as it is:
    every refused or unusual line takes the usual way, so the outcome is identical."""
    assert imap_outcome(True) == imap_outcome(False)
    core, _ = imap_core()
    chunk = b"a1 NOOP\r\n"
    assert core.client_data(chunk, 1.0, forward_first=True) is chunk
    assert core.session.commands == 0   # not parsed yet: off the round trip
    core.judge()
    assert core.session.commands == 1 and core.inflight.owed()


def imap_answered_outcome() -> list[object]:
    """Per chunk of IMAP_LINES, then per tagged answer (one chunk each, some with an untagged
    line first): what goes where, commands in flight and counted by status."""
    core, metrics = imap_core(bad_commands=100)
    out: list[object] = []
    n = 0
    for chunk in IMAP_LINES:
        up = bytes(core.client_data(chunk, 1.0, forward_first=True))
        core.judge()
        out.append((up, core.take_replies(), core.session.commands, sorted(core.inflight.pending)))
        for tag in sorted(core.inflight.pending):
            n += 1
            answer = b"%s %s done\r\n" % (tag, [b"OK", b"no", b"BAD"][n % 3])
            core.upstream_data(b"* 1 EXISTS\r\n" + answer if n % 2 else answer, 2.0)
            out.append((core.take_replies(), sorted(core.inflight.pending), core.end))
    out.append(counted(metrics))
    return out


def test_imap_plain_lines_read_by_regex_change_nothing(monkeypatch):
    """The cheap path (CommandParser.plain_line, ResponseParser.tagged_line) against the full
    parse of every chunk: the same bytes upstream, replies, commands in flight and counts."""
    cheap = imap_answered_outcome()
    monkeypatch.setattr(ImapCommands, "plain_line", lambda self, data: None)
    monkeypatch.setattr(ImapResponses, "tagged_line", lambda self, data: None)
    assert imap_answered_outcome() == cheap


POP3_LINES = [b"STAT\r\n", b"retr 1\r\n", b"TOP 1 10\r\n", b"LIST 1 2 3\r\n", b"RETR  1\r\n",
              b"CAPA\r\n", b"USER x\r\n", b"RETR 1\rx\r\n", b"NOOP\r\nNOOP\r\n", b"UI", b"DL\r\n",
              b"X" * 300 + b"\r\n", b"QUIT\r\n"]


def pop3_outcome(forward_first: bool) -> list[tuple[bytes, bytes, int]]:
    core, _ = pop3_core()
    out = []
    for chunk in POP3_LINES:
        up = bytes(core.client_data(chunk, 1.0, forward_first=forward_first))
        core.judge()
        while core.pending:   # answer everything, so local answers come in turn
            up += bytes(core.upstream_data(b"-ERR no\r\n", 2.0))
        out.append((up, core.take_replies(), core.session.commands))
    return out


POP3_ANSWERS = {True: [b"+OK 5 octets\r\nhello\r\n.\r\n", b"+OK\r\n.\r\n", b"-ERR no\r\n",
                      b"+OK x\r\n..\r\n.\r\n", b"+OK split\r\nab", b"c\r\n.\r\n"],
                False: [b"+OK 2 100\r\n", b"-ERR no\r\n", b"+OK\r\n"]}


def pop3_answered_outcome() -> list[object]:
    """POP3_LINES, each answered in chunks of the shapes above: what goes where, the commands
    pending and counted by status."""
    core, metrics = pop3_core()
    out: list[object] = []
    n = 0
    for chunk in POP3_LINES:
        up = bytes(core.client_data(chunk, 1.0, forward_first=True))
        core.judge()
        while core.pending and core.end is None:
            answers = POP3_ANSWERS[core.pending[0][2]]
            answer = answers[n % len(answers)]
            n += 1
            up += bytes(core.upstream_data(answer, 2.0))
            out.append((answer, [name for name, _, _ in core.pending], core.end))
        out.append((up, core.take_replies(), core.session.commands, core.end))
    core.client_data(b"NOOP\r\n", 3.0)
    core.upstream_data(b"+OK a\r\n+OK b\r\n", 4.0)   # one answer too many: the end
    out.append((core.take_replies(), core.end, counted(metrics)))
    return out


def test_pop3_plain_lines_and_whole_answers_change_nothing(monkeypatch):
    """The cheap path (CommandParser.plain_line, ResponseParser.whole_answer and body_chunk)
    against the full parse of every chunk: the same bytes upstream, replies, commands pending
    and counts."""
    cheap = pop3_answered_outcome()
    monkeypatch.setattr(Pop3Commands, "plain_line", lambda self, data: None)
    monkeypatch.setattr(Pop3Responses, "whole_answer", lambda self, data: None)
    monkeypatch.setattr(Pop3Responses, "body_chunk", lambda self, data: None)
    assert pop3_answered_outcome() == cheap


def test_pop3_forward_first_changes_nothing_but_when_the_parse_happens():
    assert pop3_outcome(True) == pop3_outcome(False)
    core, _ = pop3_core()
    chunk = b"RETR 1\r\n"
    assert core.client_data(chunk, 1.0, forward_first=True) is chunk and not core.pending
    core.judge()
    assert [name for name, _, _ in core.pending] == ["RETR"]
    assert core.upstream_parser.pending == 1


def test_the_outcomes_compared_above_count_commands():
    """(So that comparing them compares counts: each answers commands of several statuses.)"""
    imap, pop3 = imap_answered_outcome()[-1], pop3_answered_outcome()[-1][-1]
    assert {status for _, _, status, _ in imap} == {"OK", "NO", "BAD"}   # type: ignore[misc]
    assert {status for _, _, status, _ in pop3} == {"+OK", "-ERR"}   # type: ignore[misc]


# RFC 1939 3: stuffed lines ("..", "...", "..x"), a line that is "." plus other octets, and a
# CR LF . CR without its LF inside the body: none of them ends it; only CRLF.CRLF does.
RETR_STUFFED = (b"+OK 61 octets\r\n.\rx\r\n..\r\n...\r\n..x\r\nab\r\n.\r\r\n"
                b"\r\n..\r\n.. \r\nend\r\n.\r\n")


def test_pop3_a_terminator_split_across_reads_at_every_offset_ends_the_body_exactly():
    """A RETR answer, with a STAT's answer behind it, cut into two reads at every offset, and
    into three at every pair of offsets around the terminator: the RETR counts as answered
    exactly when the terminator's last byte arrives, never at a stuffed line, and the STAT is
    matched to its own answer. Exercises the whole-answer path, the body reader, and their
    hand-over."""
    wire = RETR_STUFFED + b"+OK 1 2\r\n"
    end = len(RETR_STUFFED)
    cuts = [(i,) for i in range(1, len(wire))] + [
        (i, j) for i in range(end - 12, end + 1) for j in range(i + 1, len(wire))]
    sess, metrics = session("pop3")
    for n, points in enumerate(cuts):
        core = Pop3RelayCore(sess, Pop3Commands(Pop3Limits(max_command_line=255)), [], now=0.0)
        for command in (b"RETR 1\r\n", b"STAT\r\n"):
            core.client_data(command, 1.0, forward_first=True)
            core.judge()
        bounds = [0, *points, len(wire)]
        for start, stop in itertools.pairwise(bounds):
            assert core.upstream_data(wire[start:stop], 2.0) == b""
            retr_done = stop >= end
            assert commands(metrics, "pop3", "RETR", "+OK") == ((n + retr_done) or None), points
            assert [name for name, _, _ in core.pending] == (
                [] if stop == len(wire) else ["STAT"] if retr_done else ["RETR", "STAT"]), points
        assert commands(metrics, "pop3", "STAT", "+OK") == n + 1, points
        assert core.end is None and core.take_replies() == b"", points


# Plain lines the cheap path takes, lines it must leave to the parser (a literal announced at
# the end of a plain-looking line, synchronising or not; a refused line), and answers.
IMAP_CUT_WIRE = (b"a1 NOOP\r\nb2 UID fetch 1:* (FLAGS)\r\nc3 APPEND INBOX {3}\r\nxyz\r\n"
                 b"d4 LOGIN {1+}\r\nu {1}\r\np\r\n(e5 NOOP\r\nf6 check\r\n"
                 b"g7 APPEND INBOX {9+}\r\nh8 NOOP\r\n\r\n")
IMAP_CUT_UP = (b"a1 NOOP\r\nb2 UID fetch 1:* (FLAGS)\r\nc3 APPEND INBOX {3}\r\nxyz\r\n"
               b"d4 LOGIN {1+}\r\nu {1}\r\np\r\nf6 check\r\ng7 APPEND INBOX {9+}\r\nh8 NOOP\r\n\r\n")


def imap_cut_outcome(cuts: tuple[int, ...]) -> tuple[object, ...]:
    """IMAP_CUT_WIRE read as chunks cut at `cuts`, each forwarded first and judged, then every
    command answered in one chunk: what went up, the replies, what was counted."""
    core, metrics = imap_core(bad_commands=100)
    up, replies = bytearray(), bytearray()
    for start, stop in itertools.pairwise([0, *cuts, len(IMAP_CUT_WIRE)]):
        up += core.client_data(IMAP_CUT_WIRE[start:stop], 1.0, forward_first=True)
        core.judge()
        replies += core.take_replies()
    owed = sorted(core.inflight.pending)
    for chunk in (b"* 1 FETCH (BODY[] {9}\r\n", b"f6 OK x\r\n", b")\r\n"):   # a literal that
        core.upstream_data(chunk, 2.0)   # looks like an answer is not one
    owed.append(sorted(core.inflight.pending))
    for tag in owed[:-1]:
        core.upstream_data(tag + b" OK done\r\n", 2.0)
    core.settle()
    up_counted = metrics.registry.get_sample_value(
        "mailproxy_bytes_total", {"direction": "client_to_upstream", "protocol": "imap"})
    return (bytes(up), bytes(replies), core.session.commands, owed, core.inflight.pending,
            up_counted, core.held.sent, counted(metrics), core.end)


def test_imap_a_command_stream_cut_at_every_offset_gives_the_same_outcome():
    """The cheap path takes a chunk only when it is one whole plain line at rest: cut anywhere
    (one offset, or two around the literals), the same bytes go up, the literal-announcing
    lines (`{3}`, `{1+}`), a literal's payload that looks like a command (in either direction)
    and the refused line take the parser's way, and the same commands are counted, as when
    the stream arrives whole or byte by byte."""
    whole = imap_cut_outcome(())
    tags = [b"a1", b"b2", b"c3", b"d4", b"f6", b"g7"]
    assert whole[:4] == (IMAP_CUT_UP, b"* BAD [CLIENTBUG] Invalid tag\r\n", 6, [*tags, tags])
    assert (whole[5], whole[6]) == (len(IMAP_CUT_UP), len(IMAP_CUT_WIRE))   # (sent: read past)
    n = len(IMAP_CUT_WIRE)
    literal = IMAP_CUT_WIRE.index(b"c3")
    assert imap_cut_outcome(tuple(range(1, n))) == whole
    for i in range(1, n):
        assert imap_cut_outcome((i,)) == whole, i
    for i in range(literal, literal + 24, 3):   # c3 and d4's lines, the literals
        for j in range(i + 1, min(n, i + 40)):
            assert imap_cut_outcome((i, j)) == whole, (i, j)
    g7 = IMAP_CUT_WIRE.index(b"h8")   # a literal that is a plain line, read as one chunk
    assert imap_cut_outcome((g7, g7 + 9)) == whole
