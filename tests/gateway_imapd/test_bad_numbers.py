"""Issue 14, item 3: numbers outside RFC ranges, huge sequence sets and deep SEARCH nesting get
an exact BAD (or a correct answer) and the session goes on: never `* BYE Internal server error`.
The gateway runs in this process, so its RSS is this process's (/proc/self/status)."""

from __future__ import annotations

import pytest
import trio

from proxy.gateway.numbers import InvalidNumber, sequence_set
from support.procstatus import reset_peak, vm_bytes

from .conftest import message
from .test_condstore import Raw

HUGE = "9" * 5000


def _literal_cmd(client: Raw, head: str, literal: bytes, tail: str) -> tuple[list[bytes], bytes]:
    client.n += 1
    tag = b"t%d" % client.n
    client.sock.sendall(tag + b" " + head.encode() + b" {%d+}\r\n" % len(literal) + literal
                        + tail.encode() + b"\r\n")
    lines = []
    while not (line := client.file.readline().rstrip(b"\r\n")).startswith(tag + b" "):
        lines.append(line)
    return lines, line


@pytest.fixture
async def session_with_mail(gateway):
    for n in range(3):
        gateway.deliver(message(n))
    client = await trio.to_thread.run_sync(Raw, gateway.port, gateway.user, gateway.password)
    await trio.to_thread.run_sync(client.cmd, "SELECT INBOX")
    yield client
    await trio.to_thread.run_sync(client.close)


CASES = [
    (f"FETCH 1 BODY[]<{HUGE}>", b"BAD Partial start: Number out of range (0 to 4294967295)"),
    (f"FETCH 1 BODY[]<0.{HUGE}>", b"BAD Partial length: Number out of range (0 to 4294967295)"),
    (f"FETCH 1 BODY[{HUGE}]", b"BAD Invalid section: Number out of range (0 to 4294967295)"),
    (f"UID FETCH 1:{HUGE} FLAGS", b"BAD Number out of range (1 to 4294967295)"),
    ("FETCH 4294967296 FLAGS", b"BAD Number out of range (1 to 4294967295)"),
    (f"SEARCH LARGER {HUGE}", b"BAD LARGER: Number out of range (0 to 4294967295)"),
    ("SEARCH SMALLER 4294967296", b"BAD SMALLER: Number out of range (0 to 4294967295)"),
    (f"SEARCH UID 1:{HUGE}", b"BAD Invalid sequence set: Number out of range (1 to 4294967295)"),
    (f"SEARCH MODSEQ {HUGE}", b"BAD MODSEQ expects a number"),
    ("SEARCH " + "NOT " * 600 + "ALL", b"BAD Search keys nested more than 100 deep"),
    ("SEARCH " + "OR ALL " * 600 + "ALL", b"BAD Search keys nested more than 100 deep"),
    ("SEARCH UID (ALL)", b"BAD Expected an atom, not a list"),   # found by tests/fuzz
    (f"FETCH 1:* (FLAGS) (CHANGEDSINCE {HUGE})",
     b"BAD CHANGEDSINCE: Number out of range (0 to 9223372036854775807)"),
]


@pytest.mark.parametrize("command,reply", CASES, ids=[c[0][:30] for c in CASES])
async def test_out_of_range_input_answers_bad_and_the_session_goes_on(session_with_mail, command,
                                                                       reply):
    client = session_with_mail
    lines, done = await trio.to_thread.run_sync(client.cmd, command)
    assert (lines, done.split(b" ", 1)[1]) == ([], reply)
    _, noop = await trio.to_thread.run_sync(client.cmd, "NOOP")
    assert noop.split(b" ", 1)[1] == b"OK NOOP completed."


async def test_sequence_set_bomb_stays_small(session_with_mail):
    client = session_with_mail
    bomb = b",".join([b"1:*"] * 100_000)   # 400 KB: the set is one range
    reset_peak()
    before = vm_bytes("VmRSS")
    lines, done = await trio.to_thread.run_sync(_literal_cmd, client, "FETCH", bomb, " (FLAGS)")
    peak = vm_bytes("VmHWM")
    assert done.split(b" ", 1)[1] == b"OK FETCH completed."
    assert [line.split(b" FETCH")[0] for line in lines] == [b"* 1", b"* 2", b"* 3"]
    print(f"RSS before {before >> 20} MiB, peak during the command {peak >> 20} MiB")
    assert peak - before < 32 * 1024 * 1024, (before, peak)
    distinct = b",".join(b"%d" % n for n in range(1, 200_003, 2))   # 100,002 distinct ranges
    lines, done = await trio.to_thread.run_sync(_literal_cmd, client, "UID FETCH", distinct,
                                                " (FLAGS)")
    assert (lines, done.split(b" ", 1)[1]) == ([], b"BAD Sequence set has more than 100000 ranges")


def test_sequence_sets_are_merged_distinct_ranges():
    assert sequence_set("1:*,1:*,3,2,5:4,*,*:7,9:*") == [(2, 5), (None, None), (1, None), (7, None),
                                                         (9, None)]
    for bad in ("", "1,", "0", "1:0", "4294967296", HUGE, "1::2", "a", "1,,2"):
        with pytest.raises(InvalidNumber):
            sequence_set(bad)
