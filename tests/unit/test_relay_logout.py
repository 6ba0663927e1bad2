"""A client's LOGOUT answered by the IMAP relay core itself (proxy/relay/imap_core.py
`answer_logout`, RFC 3501 6.1.3), alone: when it may (a LOGOUT alone at rest, all of it
written upstream) and when the upstream's answer is relayed as before. Both drivers call
`answer_logout` after forwarding a chunk with a LOGOUT (`logout_tag`); tests/integration/
test_relay_logout.py runs them against Dovecot."""

from __future__ import annotations

import pytest
from test_relay_core import commands, imap_core

from proxy.session.failures import Close

ANSWER = b"* BYE Logging out\r\nb1 OK Logout completed.\r\n"


def logout(chunks: list[bytes], forward_first: bool = False):
    """The chunks from the client, each forwarded and judged; then the driver's call."""
    core, metrics = imap_core()
    up = b""
    for chunk in chunks:
        up += bytes(core.client_data(chunk, 1.0, forward_first=forward_first))
        core.judge()
    return core, metrics, up


@pytest.mark.parametrize("chunks, refused", [
    ([b"b1 LOGOUT\r\n"], b""), ([b"b1 LOG", b"OUT\r\n"], b""), ([b"b1 logout\r\n"], b""),
    ([b"(x\r\nb1 LOGOUT\r\n"], b"* BAD [CLIENTBUG] Invalid tag\r\n")])
@pytest.mark.parametrize("forward_first", [False, True])
def test_a_logout_alone_at_rest_is_answered_by_the_proxy(chunks, refused, forward_first):
    core, metrics, up = logout(chunks, forward_first)
    assert up == b"".join(chunks).removeprefix(b"(x\r\n")   # the upstream gets the LOGOUT
    assert core.take_replies() == refused   # (a refused line before it: answered first)
    assert core.logout_tag == b"b1" and core.end is None
    assert core.answer_logout(written=True)
    assert core.take_replies() == ANSWER
    assert core.end is Close.CLIENT_LOGOUT and core.session.close_reason is Close.CLIENT_LOGOUT
    assert core.logged_out and core.logout_tag is None and not core.inflight.pending
    assert commands(metrics, "imap", "LOGOUT", "OK") == 1 and core.session.commands == 1


def test_a_logout_behind_a_command_in_flight_is_relayed():
    core, metrics, up = logout([b"a1 NOOP\r\n", b"b1 LOGOUT\r\n"])
    assert up == b"a1 NOOP\r\nb1 LOGOUT\r\n" and core.logout_tag is None
    assert not core.answer_logout(written=True) and core.take_replies() == b""
    core.upstream_data(b"a1 OK NOOP completed.\r\n* BYE Logging out\r\n", 2.0)
    core.upstream_data(b"b1 OK Logout completed.\r\n", 2.0)
    core.upstream_data(b"", 2.0)
    assert core.end is Close.CLIENT_LOGOUT and not core.logged_out
    assert commands(metrics, "imap", "NOOP", "OK") == 1
    assert commands(metrics, "imap", "LOGOUT", "OK") == 1


@pytest.mark.parametrize("chunk, up, pending", [
    (b"a1 NOOP\r\nb1 LOGOUT\r\n", b"a1 NOOP\r\nb1 LOGOUT\r\n", [b"a1", b"b1"]),
    (b"b1 LOGOUT\r\na1 NOOP\r\n", b"b1 LOGOUT\r\na1 NOOP\r\n", [b"a1", b"b1"]),
    (b"b1 LOGOUT\r\na1 NO", b"b1 LOGOUT\r\n", [b"b1"])])   # (the start of the next one held)
def test_a_logout_pipelined_with_another_command_is_relayed(chunk, up, pending):
    core, _, sent = logout([chunk])
    assert sent == up
    assert not core.answer_logout(written=True)
    assert core.take_replies() == b"" and core.end is None and not core.logged_out
    assert sorted(core.inflight.pending) == pending


def test_a_logout_not_all_written_upstream_is_relayed():
    core, _, _ = logout([b"b1 LOGOUT\r\n"], forward_first=True)
    assert not core.answer_logout(written=False)
    assert core.logout_tag is None and core.take_replies() == b"" and core.end is None
    assert not core.answer_logout(written=True)   # (asked once, right after the chunk)


def test_a_logout_while_the_upstream_is_mid_response_is_relayed():
    core, _, _ = logout([])
    core.upstream_data(b"* 3 EXI", 1.0)   # (forwarded already: a BYE now would split it)
    core.client_data(b"b1 LOGOUT\r\n", 1.0)
    assert core.logout_tag == b"b1" and not core.answer_logout(written=True)
    assert core.take_replies() == b"" and core.end is None


def test_a_logout_during_idle_is_not_answered_by_the_proxy():
    core, _, _ = logout([b"a1 IDLE\r\n"])
    core.upstream_data(b"+ idling\r\n", 1.0)
    core.client_data(b"b1 LOGOUT\r\n", 1.0)   # (read raw: what Dovecot makes of it is relayed)
    assert core.logout_tag is None and not core.answer_logout(written=True)


def test_a_logout_after_compress_is_not_answered_by_the_proxy():
    core, _, _ = logout([b"a1 COMPRESS DEFLATE\r\n"])
    core.upstream_data(b"a1 OK DEFLATE active\r\n", 1.0)
    assert core.compressed
    core.client_data(b"(compressed bytes)", 1.0)
    assert core.logout_tag is None and not core.answer_logout(written=True)


def test_the_drain_after_a_logout_answered_says_nothing_more():
    core, _, _ = logout([b"b1 LOGOUT\r\n"])
    assert core.answer_logout(written=True)
    core.take_replies()
    core.drained()
    assert core.take_replies() == b"" and core.end is Close.CLIENT_LOGOUT
