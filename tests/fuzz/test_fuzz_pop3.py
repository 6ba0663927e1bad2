"""Fuzz the POP3 parsers: CommandParser (client bytes, before and after login) and ResponseParser
(upstream bytes: greeting, status lines, SASL continuations, dot-stuffed multi-line bodies).
Inputs are built from the grammar and then mutated.

Invariants, for every input, limit and option:
- only events or `ProtocolError` come out, whole, byte by byte and at random cuts, and all three
  give the same events and errors (body chunks merged);
- every error's reply is one `-ERR` line with a bounded kind, never an echo of the input;
- at every NEED_DATA the parser holds at most one line (its limit), whatever was fed: a body is
  passed on as it arrives, an overlong line is dropped as it arrives.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proxy.pop3 import NEED_DATA, PREAUTH_LIMITS, CommandParser, Limits, ProtocolError, ResponseParser
from proxy.pop3._util import KINDS
from proxy.pop3.events import Command, ConnectionClosed, MultilineData

from .harness import CUTS, Grammar, chunkings, drive, fuzz_settings, mutated, same_everywhere

TINY = Limits(max_command_line=12, max_response_line=16)
LIMITS = [Limits(), PREAUTH_LIMITS, TINY]
HELD_BACK = 5   # bytes a body reader may keep to recognise "\r\n.\r\n" split across reads


def _describe(error: ProtocolError) -> tuple[object, ...]:
    reply = error.reply()
    assert error.kind in KINDS, error.kind
    assert reply.startswith(b"-ERR ") and reply.endswith(b"\r\n") and b"\n" not in reply[:-2], reply
    assert reply.isascii(), reply
    return error.kind, reply, error.fatal


POP3 = Grammar(error=ProtocolError, need_data=NEED_DATA, closed=ConnectionClosed, data=MultilineData,
               describe=_describe)

FRAGMENTS = [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b".\r\n", b" ", b"+OK", b"-ERR",
             b"+ ", b"[", b"]", b"/", b"\x00", b"\xff", b"PASS ", b"AUTH ", b"*"]

_word = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789=+/@.-_", min_size=1,
                max_size=12).map(str.encode)
_line_text = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
keywords = st.one_of(
    st.sampled_from([b"USER", b"PASS", b"APOP", b"AUTH", b"CAPA", b"STLS", b"STAT", b"LIST", b"RETR",
                     b"TOP", b"UIDL", b"DELE", b"NOOP", b"RSET", b"QUIT", b"XCLIENT", b"user", b"*"]),
    _word,
)


@st.composite
def command_lines(draw: Any) -> bytes:
    keyword = draw(keywords)
    if keyword == b"PASS":
        rest = b" " + draw(_line_text)   # the whole rest of the line is the password
    else:
        rest = b"".join(b" " + arg for arg in draw(st.lists(_word, max_size=3)))
    return keyword + rest + draw(st.sampled_from([b"\r\n", b"\n"]))


_code = st.one_of(st.just(b""), st.sampled_from([b"[AUTH] ", b"[SYS/TEMP] ", b"[IN-USE] ",
                                                  b"[LOGIN-DELAY] ", b"[", b"[]"]))
_body_line = st.one_of(_line_text, st.builds(lambda dots, rest: b"." * dots + rest, st.integers(1, 3),
                                             _line_text))


@st.composite
def dialogues(draw: Any) -> tuple[list[bool], bytes]:
    """(expectations queued with expect(), server bytes): status lines, SASL continuations and
    dot-stuffed bodies, well-formed before mutation."""
    expected: list[bool] = []
    wire = [b"+OK ready\r\n"]   # the greeting, expected by the parser itself
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()) and draw(st.booleans()):
            wire.append(b"+ " + draw(_line_text) + b"\r\n")   # RFC 5034 challenge: no expectation
            continue
        multiline = draw(st.booleans())
        expected.append(multiline)
        ok = draw(st.booleans()) or multiline
        wire.append((b"+OK " if ok else b"-ERR ") + draw(_code) + draw(_line_text) + b"\r\n")
        if ok and multiline:
            lines = draw(st.lists(_body_line, max_size=6))
            wire.append(b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                                 for line in lines) + b".\r\n")
    return expected, b"".join(wire)


def _bounded(limit: int):
    def check(parser: Any) -> None:
        assert parser.buffered <= limit + HELD_BACK, parser.buffered
    return check


@fuzz_settings(300)
@given(wire=mutated(st.lists(command_lines(), min_size=1, max_size=6).map(b"".join), FRAGMENTS),
       limits=st.sampled_from(LIMITS), raw=st.lists(st.booleans(), min_size=1, max_size=8), cuts=CUTS)
def test_command_parser(wire: bytes, limits: Limits, raw: list[bool], cuts: list[int]) -> None:
    def react(parser: CommandParser, event: object, index: int) -> None:
        # a server reads SASL responses raw after AUTH's "+ " challenges
        if isinstance(event, Command) and (event.name == b"AUTH" or raw[index % len(raw)]):
            parser.expect_line()

    results = {name: drive(POP3, CommandParser(limits), chunks, react=react,
                           check=_bounded(limits.max_command_line))
               for name, chunks in chunkings(wire, cuts).items()}
    same_everywhere(results)


@st.composite
def mutated_dialogues(draw: Any) -> tuple[list[bool], bytes]:
    expected, wire = draw(dialogues())
    return expected, draw(mutated(st.just(wire), FRAGMENTS))


@fuzz_settings(300)
@given(dialogue=mutated_dialogues(), limits=st.sampled_from(LIMITS), unstuff=st.booleans(),
       keep_bodies=st.booleans(), extra=st.lists(st.booleans(), max_size=3), cuts=CUTS)
def test_response_parser(dialogue: tuple[list[bool], bytes], limits: Limits, unstuff: bool,
                         keep_bodies: bool, extra: list[bool], cuts: list[int]) -> None:
    expected, wire = dialogue

    def parser() -> ResponseParser:
        made = ResponseParser(limits, unstuff=unstuff, keep_bodies=keep_bodies)
        for multiline in expected + extra:
            made.expect(multiline)
        return made

    results = {name: drive(POP3, parser(), chunks, check=_bounded(limits.max_response_line))
               for name, chunks in chunkings(wire, cuts).items()}
    same_everywhere(results)


@fuzz_settings(200)
@given(wire=st.binary(max_size=400), limits=st.sampled_from(LIMITS), cuts=CUTS)
def test_both_parsers_random_bytes(wire: bytes, limits: Limits, cuts: list[int]) -> None:
    for make, limit in ((lambda: CommandParser(limits), limits.max_command_line),
                        (lambda: ResponseParser(limits), limits.max_response_line)):
        results = {name: drive(POP3, make(), chunks, check=_bounded(limit))
                   for name, chunks in chunkings(wire, cuts).items()}
        same_everywhere(results)
