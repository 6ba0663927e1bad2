"""The relay's held lines (proxy/relay/held_lines.py) over the parser's `rejected_at` and
`resumed_at`: what is forwarded is exactly the good commands, however the input is cut into
chunks, and an error the relay cannot take back is reported as such."""

from __future__ import annotations

import pytest

from proxy.imap import NEED_DATA, CommandParser, Limits, ProtocolError
from proxy.relay.held_lines import HeldLines

LIMITS = Limits(max_line=24, max_literal=100, max_nonsync_literal=8)


def relay(wire: bytes, size: int) -> tuple[bytes, list[str]]:
    """What the relay forwards (proxy.relay.held_lines.HeldLines as imap_relay drives it) when
    `wire` comes `size` bytes at a time, and the kinds of errors answered in place ("fatal" or
    "unrecoverable": the session would end there)."""
    parser = CommandParser(LIMITS)
    held = HeldLines(parser)
    out, errors = bytearray(), []
    for start in range(0, len(wire), size):
        chunk = wire[start:start + size]
        parser.receive_data(chunk)
        held.add(chunk)
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                before = None if exc.fatal else held.reject()
                if before is None:
                    errors.append("fatal" if exc.fatal else "unrecoverable")
                    return bytes(out), errors
                out += before
                errors.append(exc.kind)
                continue
            if held.dropping:
                held.after_event()
            if event is NEED_DATA:
                break
        out += held.accepted()
    return bytes(out), errors


GOOD = b"a1 NOOP\r\nA2 APPEND x {3}\r\nabc\r\n"
CASES = [
    ("bad-tag", b"(x NOOP\r\n", ["bad_syntax"]),
    ("no-name", b"a3\r\n", ["bad_syntax"]),
    ("overlong", b"a3 SELECT " + b"x" * 40 + b"\r\n", ["line_too_long"]),
    ("overlong-with-literal", b"a3 X " + b"x" * 40 + b" {4+}\r\nabcd\r\n", ["line_too_long"]),
    ("sync-literal-too-big", b"a3 APPEND x {101}\r\n", ["literal_too_big"]),
    ("nonsync-literal-too-big", b"a3 APPEND x {9+}\r\n123456789 {2+}\r\nab\r\n",
     ["nonsync_literal_too_big"]),
    ("two-in-a-row", b"(x\r\na3 X " + b"y" * 30 + b"\r\n", ["bad_syntax", "line_too_long"]),
]


@pytest.mark.parametrize("bad,kinds", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_dropping_the_rejected_span_leaves_the_good_commands(bad, kinds, size):
    wire = GOOD + bad + GOOD
    assert relay(wire, size) == (GOOD + GOOD, kinds)


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_an_error_after_a_literal_cannot_be_dropped(size):
    """The first line part is upstream already: only closing is left."""
    accepted = GOOD + b"a3 APPEND x {3}\r\nabc"
    out, errors = relay(accepted + b" " + b"x" * 40 + b"\r\n" + GOOD, size)
    assert errors == ["unrecoverable"] and accepted.startswith(out)  # (a chunk's tail unsent)


def test_an_endless_line_is_fatal():
    wire = GOOD + b"a3 X " + b"x" * 24 * 17 + b"\r\n"
    assert relay(wire, 1000) == (GOOD, ["line_too_long", "fatal"])
