"""Fuzz the IMAP framing: CommandParser (client bytes, untrusted before and after login) and
ResponseParser (upstream bytes). Inputs are built from the grammar (tags, names, atoms, quoted
strings, literals of the three kinds, nested lists, response codes) and then mutated, so most of
them get deep into a message before they go wrong.

Invariants, for every input, every limit set and every parser option:
- only events or `ProtocolError` come out, whole, byte by byte and at random cuts, and all three
  give the same events and errors (literal payload chunks merged);
- every error's reply is one ASCII line with a bounded kind, never an echo of the input;
- at every NEED_DATA the parser holds at most one line part (`max_line` + CRLF, or the 32-byte
  tail kept while skipping an overlong line): no input makes it buffer more.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.imap import NEED_DATA, PREAUTH_LIMITS, CommandParser, Limits, ProtocolError, ResponseParser
from proxy.imap._errors import KINDS
from proxy.imap.events import Command, ConnectionClosed, LiteralData, LiteralStart

from .harness import CUTS, Grammar, chunkings, drive, fuzz_settings, mutated, same_everywhere

TINY = Limits(max_line=24, max_literal=16, max_nonsync_literal=4, max_depth=2, max_args=6)
LIMITS = [Limits(), PREAUTH_LIMITS, TINY]
TAIL_KEEP = 32   # _resync._TAIL_KEEP: bytes kept while skipping an overlong line (+ a CR after them)


def _describe(error: ProtocolError) -> tuple[object, ...]:
    reply = error.reply()
    assert error.kind in KINDS, error.kind
    assert reply.endswith(b"\r\n") and b"\n" not in reply[:-2] and reply.isascii(), reply
    return error.kind, reply, error.fatal


IMAP = Grammar(error=ProtocolError, need_data=NEED_DATA, closed=ConnectionClosed, data=LiteralData,
               describe=_describe)

# ---- grammar-shaped inputs -------------------------------------------------------------------

FRAGMENTS = [b"{3}\r\n", b"{0}\r\n", b"{2+}\r\n", b"~{1}\r\n", b"{99999999999999999999999}\r\n",
             b"{", b"}", b"(", b")", b'"', b"\\", b"[", b"]", b" ", b"\r\n", b"\n", b"\r", b"\x00",
             b"\xff", b"<0.1>", b"* ", b"+ ", b"A1 ", b"UID ", b"NIL"]

_atom_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:,*\\$-_%!#&'+/=?^`|~"
atoms = st.one_of(
    st.text(_atom_chars, min_size=1, max_size=12).map(str.encode),
    st.sampled_from([b"NIL", b"1:*", b"2,4:7", b"\\Seen", b"\\Deleted",
                     b"BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>", b"BODY[1.2.MIME]", b"RFC822.SIZE", b"UID",
                     b"$Forwarded", b"[", b"]"]),
)
_quotable = st.binary(max_size=20).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))
quoted = _quotable.map(lambda b: b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')


@st.composite
def literals(draw: Any) -> bytes:
    payload = draw(st.binary(max_size=40))
    marker = draw(st.sampled_from([b"{%d}", b"{%d+}", b"~{%d}", b"~{%d+}"])) % len(payload)
    return marker + b"\r\n" + payload


arguments = st.recursive(
    st.one_of(atoms, quoted, literals()),
    lambda inner: st.lists(inner, max_size=4).map(lambda items: b"(" + b" ".join(items) + b")"),
    max_leaves=12,
)
tags = st.one_of(st.sampled_from([b"A1", b"a.2", b"*", b"+", b"", b"T" * 40]), atoms)
command_names = st.one_of(
    st.sampled_from([b"NOOP", b"LOGIN", b"AUTHENTICATE", b"SELECT", b"FETCH", b"UID FETCH", b"UID",
                     b"UID STORE", b"APPEND", b"IDLE", b"DONE", b"SEARCH", b"ID", b"STARTTLS",
                     b"LOGOUT", b"COMPRESS", b"ENABLE", b"noop"]),
    atoms,
)


@st.composite
def commands(draw: Any) -> bytes:
    args = draw(st.lists(arguments, max_size=5))
    return b" ".join([draw(tags), draw(command_names), *args]) + b"\r\n"


_text = _quotable
_code = st.builds(lambda name, args: b"[" + b" ".join([name, *args]) + b"] ",
                  st.sampled_from([b"UIDVALIDITY", b"CAPABILITY", b"TOOBIG", b"PERMANENTFLAGS", b"X"]),
                  st.lists(st.one_of(atoms, st.just(b"(\\Seen \\*)")), max_size=2))
_status = st.sampled_from([b"OK", b"NO", b"BAD", b"PREAUTH", b"BYE", b"ok", b"XX"])


@st.composite
def responses(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["tagged", "status", "data", "continuation"]))
    if kind == "continuation":
        return b"+" + draw(st.sampled_from([b"", b" "])) + draw(_text) + b"\r\n"
    code = draw(st.one_of(st.just(b""), _code))
    if kind == "tagged":
        return draw(tags) + b" " + draw(_status) + b" " + code + draw(_text) + b"\r\n"
    if kind == "status":
        return b"* " + draw(_status) + b" " + code + draw(_text) + b"\r\n"
    number = draw(st.one_of(st.just(b""), st.integers(0, 2**40).map(lambda n: b"%d " % n)))
    name = draw(st.sampled_from([b"FETCH", b"EXISTS", b"LIST", b"CAPABILITY", b"SEARCH", b"VANISHED"]))
    args = draw(st.lists(arguments, max_size=4))
    return b" ".join([b"*", number + name, *args]) + b"\r\n"


command_streams = mutated(st.lists(commands(), min_size=1, max_size=4).map(b"".join), FRAGMENTS)
response_streams = mutated(st.lists(responses(), min_size=1, max_size=4).map(b"".join), FRAGMENTS)
options = st.tuples(st.sampled_from(LIMITS), st.booleans(), st.booleans())


def _bounded(limits: Limits):
    def check(parser: Any) -> None:
        assert parser.buffered <= max(limits.max_line + 2, TAIL_KEEP + 1), parser.buffered
    return check


def _client_reactions(choices: list[bool]):
    """What a server does with client events: refuse some synchronising literals (reject_literal
    instead of "+"), and read the next line raw after AUTHENTICATE and IDLE."""
    def react(parser: CommandParser, event: object, index: int) -> None:
        if isinstance(event, LiteralStart) and event.synchronizing and choices[index % len(choices)]:
            parser.reject_literal()
        elif isinstance(event, Command) and event.name in (b"AUTHENTICATE", b"IDLE"):
            parser.expect_line()
    return react


# ---- targets ----------------------------------------------------------------------------------

@fuzz_settings(300)
@given(wire=command_streams, config=options, choices=st.lists(st.booleans(), min_size=1, max_size=8),
       cuts=CUTS)
def test_command_parser(wire: bytes, config: tuple[Limits, bool, bool], choices: list[bool],
                        cuts: list[int]) -> None:
    limits, collect, parse = config
    results = {
        name: drive(IMAP, CommandParser(limits, collect_literals=collect, parse_args=parse), chunks,
                    react=_client_reactions(choices), check=_bounded(limits))
        for name, chunks in chunkings(wire, cuts).items()
    }
    same_everywhere(results)


@fuzz_settings(300)
@given(wire=response_streams, config=options, raw=st.lists(st.booleans(), min_size=1, max_size=8),
       cuts=CUTS)
# Found by this target: the tag of an overlong line was looked for in everything buffered, so a
# tag longer than max_line got a tagged BAD when the line arrived whole but an untagged one when it
# trickled in (the reply depended on TCP segmentation). Fixed in _parser._take_line.
@example(wire=b"A1 OK \r\n" + b"T" * 40 + b" OK \r\n", config=(TINY, False, False), raw=[False], cuts=[])
# Found by this target: while skipping an overlong line the kept tail counted a CR still waiting
# for its LF, so a literal marker of exactly TAIL_KEEP bytes was seen when the line arrived whole
# but lost when it trickled in (fatal literal_too_big vs resuming at the next line).
@example(wire=b"{" + b"9" * 30 + b"}\r\n1 OK \r\n", config=(TINY, False, False), raw=[False], cuts=[])
def test_response_parser(wire: bytes, config: tuple[Limits, bool, bool], raw: list[bool],
                         cuts: list[int]) -> None:
    limits, collect, parse = config

    def react(parser: ResponseParser, event: object, index: int) -> None:
        if raw[index % len(raw)]:
            parser.expect_line()

    results = {
        name: drive(IMAP, ResponseParser(limits, collect_literals=collect, parse_args=parse), chunks,
                    react=react, check=_bounded(limits))
        for name, chunks in chunkings(wire, cuts).items()
    }
    same_everywhere(results)


@fuzz_settings(300)
@given(wire=st.binary(max_size=400), config=options, cuts=CUTS)
def test_command_parser_random_bytes(wire: bytes, config: tuple[Limits, bool, bool],
                                     cuts: list[int]) -> None:
    limits, collect, parse = config
    results = {
        name: drive(IMAP, CommandParser(limits, collect_literals=collect, parse_args=parse), chunks,
                    check=_bounded(limits))
        for name, chunks in chunkings(wire, cuts).items()
    }
    same_everywhere(results)
