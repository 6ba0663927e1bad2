"""The upstream-login machine (proxy/relay/imap_login_machine.py) that trio's IMAP login and the
relay engine's both drive: each dialogue is fed whole, one byte at a time, and split in two at
every offset, and must give the same steps (what to write, the verdict, the failure). Among
them: the greeting and the verdict in pieces, untagged lines and an ID's completion before the
verdict, garbage, an upstream closing mid-greeting, and the early login's decisions (it stands,
it goes once more for what this connection announced, the greeting said nothing so CAPABILITY
is asked first and the refusal is decided without a second login from scratch)."""

from __future__ import annotations

import ast
import pathlib
from typing import Any, Iterator

import pytest

import proxy.relay.imap_login_machine as machine_module
from proxy.imap import NEED_DATA, ResponseParser
from proxy.relay.imap_login_machine import GREETED, Failed, ImapLogin, Send, Unsendable, Verdict
from proxy.relay.imap_upstream import UpstreamIMAP, upstream_limits
from proxy.session.channel import Channel
from proxy.session.failures import Failure
from proxy.session.sasl import Credentials

CAPS = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN"
EARLY = tuple(CAPS.split())
CREDS = Credentials("alice", b"secret pw", "LOGIN")
PLAIN = b"AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldCBwdw==\r\n"
ID_FIELDS = b'"x-originating-ip" "192.0.2.7"'


def upstream() -> UpstreamIMAP:
    channel: Any = Channel(None, ResponseParser(upstream_limits()), NEED_DATA)  # type: ignore[arg-type]
    return UpstreamIMAP(channel)


def splits(wire: bytes) -> Iterator[list[bytes]]:
    """The wire whole, one byte at a time, and cut in two at every offset."""
    yield [wire]
    yield [wire[i:i + 1] for i in range(len(wire))]
    for i in range(1, len(wire)):
        yield [wire[:i], wire[i:]]


def run(machine: ImapLogin, chunks: list[bytes], eof: bool = False) -> list[object]:
    """Every step but NEED_DATA, feeding the chunks one by one (b"" at the end with `eof`)."""
    steps: list[object] = []
    for chunk in chunks + ([b""] if eof else []):
        machine.receive_data(chunk)
        while True:
            step = machine.next_step()
            if step is NEED_DATA:
                break
            steps.append(step)
            if isinstance(step, (Failed, Verdict)) or step is Unsendable:
                return steps
    return steps


def early_login(early: tuple[bytes, ...] = EARLY, id_fields: bytes | None = None
                ) -> tuple[ImapLogin, bytes]:
    machine = ImapLogin(upstream())
    sent = machine.begin_login(CREDS, id_fields, early)
    assert sent is not None
    return machine, sent


@pytest.mark.parametrize("chunks", list(splits(b"* OK [CAPABILITY " + CAPS + b"] ready.\r\n")))
def test_a_greeting_in_any_pieces(chunks: list[bytes]) -> None:
    machine = ImapLogin(upstream())
    assert run(machine, chunks) == [GREETED]
    assert machine.greeted and machine.greeting == EARLY and machine.up.capabilities == EARLY


@pytest.mark.parametrize("wire, failure, detail", [
    (b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n", Failure.PROTOCOL, "PREAUTH greeting"),
    (b"* BYE too many connections\r\n", Failure.UPSTREAM, "upstream greeting was not OK"),
    (b"+ go ahead\r\n", Failure.UPSTREAM, "upstream greeting was not OK"),
    (b"A1 OK what\r\n", Failure.UPSTREAM, "upstream greeting was not OK"),
    (b"HTTP/1.1 400 Bad Request\r\n", Failure.PROTOCOL, "bad response: Invalid response status"),
    (b"\x00\x01\x02\r\n", Failure.PROTOCOL, "bad response: Invalid tag"),
])
def test_a_bad_greeting_fails(wire: bytes, failure: Failure, detail: str) -> None:
    for chunks in splits(wire):
        assert run(ImapLogin(upstream()), chunks) == [Failed(failure, detail)]


def test_preauth_where_tls_is_required_says_so() -> None:
    machine = ImapLogin(upstream(), tls_required=True)
    assert run(machine, [b"* PREAUTH hi\r\n"]) == [
        Failed(Failure.PROTOCOL, "PREAUTH greeting where TLS is required")]


@pytest.mark.parametrize("cut", range(0, 30))
def test_the_upstream_closing_mid_greeting(cut: int) -> None:
    wire = b"* OK [CAPABILITY IMAP4rev1] x\r\n"[:cut]
    assert run(ImapLogin(upstream()), [wire], eof=True) == [
        Failed(Failure.UPSTREAM, "connection closed by upstream")]


def test_an_early_login_goes_in_one_write_with_the_id() -> None:
    machine, sent = early_login(id_fields=ID_FIELDS)
    assert sent == b'P1 ID ("x-originating-ip" "192.0.2.7")\r\nP2 ' + PLAIN
    assert machine.early and machine.up.capabilities == ()   # built for EARLY, none known yet


def test_without_sasl_ir_the_login_is_login_with_quoted_strings() -> None:
    machine, sent = early_login(early=(b"IMAP4rev1", b"AUTH=PLAIN"))
    assert sent == b'P1 LOGIN alice "secret pw"\r\n'


VERDICT_OK = (b"* OK [CAPABILITY " + CAPS + b"] ready.\r\n"
              b"* ID NIL\r\nP1 OK ID completed.\r\n"
              b"* OK [ALERT] untagged before the verdict\r\n"
              b"* CAPABILITY IMAP4rev1 IDLE\r\n"
              b"P2 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")


@pytest.mark.parametrize("chunks", list(splits(VERDICT_OK)))
def test_an_early_ok_in_any_pieces(chunks: list[bytes]) -> None:
    machine, _ = early_login(id_fields=ID_FIELDS)
    steps = run(machine, chunks)
    assert steps[0] is GREETED and len(steps) == 2
    verdict = steps[1]
    assert isinstance(verdict, Verdict) and verdict.reply.status == b"OK"
    assert verdict.reply.text == b"Logged in"
    assert machine.up.capabilities == (b"IMAP4rev1", b"IDLE", b"MOVE")   # the code's, last
    assert not machine.early


def test_an_ok_without_capabilities_asks_for_them() -> None:
    machine, _ = early_login()
    steps = run(machine, [b"* OK [CAPABILITY " + CAPS + b"] hi\r\nP1 OK Logged in\r\n"])
    assert steps == [GREETED, Send(b"P2 CAPABILITY\r\n")]
    steps = run(machine, [b"* CAPABILITY IMAP4rev1 IDLE\r\nP2 OK done\r\n"])
    assert len(steps) == 1 and isinstance(steps[0], Verdict)
    assert steps[0].reply.tag == b"P1" and steps[0].reply.text == b"Logged in"
    assert machine.up.capabilities == (b"IMAP4rev1", b"IDLE")


def test_a_refusal_built_for_the_announced_capabilities_stands() -> None:
    machine, _ = early_login()
    steps = run(machine, [b"* OK [CAPABILITY " + CAPS + b"] hi\r\n"
                          b"P1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"])
    assert steps[0] is GREETED and isinstance(steps[1], Verdict) and len(steps) == 2
    assert steps[1].reply.code == b"AUTHENTICATIONFAILED"


def test_a_refusal_built_for_other_capabilities_goes_once_more() -> None:
    machine, _ = early_login()
    steps = run(machine, [b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\nP1 NO nope\r\n"])
    assert steps == [GREETED, Send(b'P2 LOGIN alice "secret pw"\r\n')]
    steps = run(machine, [b"P2 NO [AUTHENTICATIONFAILED] still no\r\n"])
    assert len(steps) == 1 and isinstance(steps[0], Verdict)
    assert steps[0].reply.tag == b"P2"   # the second refusal is the verdict: never a third


@pytest.mark.parametrize("announced, then", [
    (CAPS, "verdict"),                       # the same: the refusal stands, one login
    (b"IMAP4rev1 AUTH=PLAIN", "again"),      # others: once more, built for them
])
def test_a_refusal_after_a_greeting_without_capabilities_is_decided_here(
        announced: bytes, then: str) -> None:
    machine, _ = early_login()
    steps = run(machine, [b"* OK hi\r\nP1 NO [AUTHENTICATIONFAILED] no\r\n"])
    assert steps == [GREETED, Send(b"P2 CAPABILITY\r\n")]
    steps = run(machine, [b"* CAPABILITY " + announced + b"\r\nP2 OK done\r\n"])
    if then == "verdict":
        assert len(steps) == 1 and isinstance(steps[0], Verdict)
        assert steps[0].reply.tag == b"P1" and steps[0].reply.code == b"AUTHENTICATIONFAILED"
    else:
        assert steps == [Send(b'P3 LOGIN alice "secret pw"\r\n')]


def test_a_login_that_cannot_go_in_one_write_is_unsendable() -> None:
    machine, _ = early_login()
    steps = run(machine, [b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\nP1 NO x\r\n"])
    assert steps == [GREETED, Unsendable]
    assert not machine.early


@pytest.mark.parametrize("wire, failure, detail", [
    (b"* BYE shutting down\r\n", Failure.UPSTREAM, "upstream said BYE"),
    (b"+ more please\r\n", Failure.PROTOCOL, "unexpected continuation request"),
    (b"P1 WHAT\r\n", Failure.PROTOCOL, "bad response: Invalid response status"),
])
def test_what_fails_a_login_before_its_verdict(wire: bytes, failure: Failure,
                                               detail: str) -> None:
    for chunks in splits(wire):
        machine, _ = early_login()
        assert run(machine, [b"* OK [CAPABILITY " + CAPS + b"] hi\r\n"] + chunks) == [
            GREETED, Failed(failure, detail)]


def test_the_upstream_closing_before_the_verdict() -> None:
    machine, _ = early_login()
    assert run(machine, [b"* OK [CAPABILITY " + CAPS + b"] hi\r\nP1 OK Logg"], eof=True) == [
        GREETED, Failed(Failure.UPSTREAM, "connection closed by upstream")]


def test_a_plain_command_returns_its_completion() -> None:
    machine = ImapLogin(upstream(), greeted=True)
    machine.expect(b"P1")
    steps = run(machine, [b"P0 OK other\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK done\r\n"])
    assert len(steps) == 1 and getattr(steps[0], "tag", None) == b"P1"
    assert machine.up.capabilities == (b"IMAP4rev1", b"STARTTLS")


def test_the_machine_is_sans_io() -> None:
    path = pathlib.Path(machine_module.__file__)
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & {"trio", "socket", "ssl", "asyncio", "selectors"}
