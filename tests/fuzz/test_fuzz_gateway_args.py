"""Fuzz the gateway's command-argument parsers as the IMAP parser hands them over (atoms,
strings, nested tuples): SEARCH keys (`search.parse_search`), FETCH items (`_fetch.parse_items`),
sequence sets (`_args.parse_sequence_set`), numbers and APPEND's message groups with CATENATE
(`_append.groups`).

Invariant: each returns its value or raises its own error (SearchError, Reply), nothing else,
whatever the numbers (5,000 digits, 2^32, 0), the nesting (NOT x 600) or the garbage."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.gateway.imapd._append import groups
from proxy.gateway.imapd._args import Reply, parse_sequence_set
from proxy.gateway.imapd._fetch import parse_items
from proxy.gateway.search import SearchError, parse_search
from proxy.imap._tokens import Atom, Literal

from .harness import fuzz_settings

_NUMBERS = st.sampled_from([b"0", b"1", b"4294967295", b"4294967296", b"9" * 5000, b"*", b"-1", b""])
_WORDS = st.sampled_from([b"ALL", b"NOT", b"OR", b"UID", b"LARGER", b"SMALLER", b"BODY", b"TEXT",
                          b"SUBJECT", b"HEADER", b"SINCE", b"MODSEQ", b"KEYWORD", b"CHARSET",
                          b"UTF-8", b"SEEN", b"1-Jan-2024", b"OLDER", b"YOUNGER", b"$"])
_SETS = st.lists(st.tuples(_NUMBERS, st.one_of(st.none(), _NUMBERS)), min_size=1, max_size=4).map(
    lambda items: b",".join(a + (b":" + b if b is not None else b"") for a, b in items))
_ATOMS = st.one_of(_WORDS, _NUMBERS, _SETS, st.binary(max_size=8)).map(Atom)
_STRINGS = st.one_of(st.binary(max_size=8), _NUMBERS)
_ARGS = st.recursive(st.one_of(_ATOMS, _STRINGS),
                     lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=30)
_ITEMS = st.sampled_from([b"BINARY.SIZE[1]", b"BINARY.PEEK[1.MIME]", b"BINARY[" + b"9" * 5000 + b"]",
                          b"FLAGS", b"UID", b"BODY", b"BODY[]", b"BODY.PEEK[1.2.MIME]",
                          b"BODY[]<0.10>", b"BODY[]<" + b"9" * 5000 + b">", b"BODY[" + b"9" * 5000 + b"]",
                          b"BODY[1.0]", b"BODY[HEADER.FIELDS]", b"RFC822.SIZE", b"ENVELOPE", b"ALL",
                          b"BINARY[1]", b"BODY[]<4294967296>"]).map(Atom)


@fuzz_settings(120)
@given(st.lists(_ARGS, max_size=8))
@example([Atom(b"NOT")] * 600 + [Atom(b"ALL")])          # issue 14: RecursionError -> BAD
@example([Atom(b"LARGER"), Atom(b"9" * 5000)])           # issue 14: int() of 5,000 digits
@example([Atom(b"UID"), (Atom(b"ALL"),)])                # found here: TypeError, not BAD
def test_search_keys_parse_or_raise_search_error(args: list) -> None:
    try:
        parse_search(args)
    except SearchError:
        pass


@fuzz_settings(150)
@given(st.one_of(_ITEMS, st.lists(_ITEMS, max_size=5).map(tuple), _ARGS), st.booleans())
def test_fetch_items_parse_or_answer_bad(arg: object, uid: bool) -> None:
    try:
        parse_items(arg, uid=uid)
    except Reply as reply:
        assert reply.status == b"BAD"


@fuzz_settings(150)
@given(st.one_of(_SETS, st.binary(max_size=20)))
@example(b",".join([b"1:*"] * 10_000))
def test_sequence_sets_parse_or_answer_bad(text: bytes) -> None:
    try:
        ranges = parse_sequence_set(Atom(text))
    except Reply as reply:
        assert reply.status == b"BAD"
    else:
        assert len(ranges) <= len(set(text.split(b",")))


_APPEND_WORDS = st.sampled_from([b"CATENATE", b"TEXT", b"URL", b"(\\Seen)", b"1-Jan-2024"]).map(Atom)
_APPEND_ARGS = st.recursive(
    st.one_of(_APPEND_WORDS, _STRINGS, st.binary(max_size=8).map(Literal)),
    lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12)


@fuzz_settings(150)
@given(st.lists(_APPEND_ARGS, max_size=6))
@example([Atom(b"CATENATE"), (Atom(b"TEXT"), Literal(b"x"), Atom(b"URL"), b"/INBOX/;UID=1")])
def test_append_groups_parse_or_answer_bad(args: list) -> None:
    """APPEND's `[flags] [date] (literal / CATENATE (...))` groups (RFC 3502, RFC 4469): parsed
    or BAD, never another error."""
    try:
        groups(args)
    except Reply as reply:
        assert reply.status == b"BAD"
