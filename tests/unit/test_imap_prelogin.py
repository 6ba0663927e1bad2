"""The IMAP pre-login machine (proxy/session/imap_prelogin.py) alone: a command line in, the
Answer out, with a real Session and a fresh metrics registry (no sockets, no trio). Its two
callers (ImapFront on trio, the relay engine's thread) only write what it answers; the
integration tests (test_imap_relay, test_bad_input, test_tls) run ImapFront against clients."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from proxy.config import loads
from proxy.imap import CommandParser, events
from proxy.metrics import Metrics
from proxy.session.context import Runtime, Session
from proxy.session.failures import Close
from proxy.session.imap_front import preauth_limits
from proxy.session.imap_prelogin import Answer, ImapPrelogin, Then


def machine(tls: str = "none", require_tls: bool = False, oauth2: bool = False,
            client: str = "127.0.0.1") -> tuple[ImapPrelogin, Metrics]:
    config = loads(json.dumps({
        "listeners": [{"name": "l", "protocol": "imap", "address": "127.0.0.1:0",
                       "oauth2_passthrough": oauth2}],
        "upstreams": {"up": {"host": "192.0.2.1", "imap": {"port": 143, "tls": "none"}}},
        "routes": [{"match": "*", "upstream": "up"}],
    }))
    metrics = Metrics()
    runtime = Runtime.build(config, metrics)
    # (a TLS listener's runtime would load certificates: the machine reads only these fields)
    listener = replace(config.listeners[0], tls=tls, require_tls=require_tls)
    session = Session(runtime, listener, client, 40000, "127.0.0.1", 143)
    return ImapPrelogin(session), metrics


def command(line: bytes) -> tuple[events.Command, int]:
    """`line` parsed as ImapFront parses it, and the bytes buffered after it."""
    prelogin, _ = machine()
    parser = CommandParser(preauth_limits(prelogin.session.listener.limits),
                           collect_literals=True, parse_args=True)
    parser.receive_data(line)
    event = parser.next_event()
    while not isinstance(event, events.Command):
        event = parser.next_event()
    return event, parser.buffered


def answer(prelogin: ImapPrelogin, line: bytes) -> Answer:
    cmd, buffered = command(line)
    return prelogin.answer(cmd, buffered)


CAPS = b"IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN AUTH=LOGIN"


def test_greeting_and_capability() -> None:
    prelogin, _ = machine()
    assert prelogin.greeting() == b"* OK [CAPABILITY %s] mailproxy ready.\r\n" % CAPS
    assert answer(prelogin, b"a CAPABILITY\r\n") == Answer(
        untagged=b"* CAPABILITY %s\r\n" % CAPS, tagged=b"a OK Capability completed.\r\n")


def test_noop_id_logout_unknown() -> None:
    prelogin, _ = machine()
    assert answer(prelogin, b"a NOOP\r\n") == Answer(tagged=b"a OK NOOP completed.\r\n")
    assert answer(prelogin, b'b ID ("name" "x")\r\n') == Answer(
        untagged=b'* ID ("name" "mailproxy")\r\n', tagged=b"b OK ID completed.\r\n")
    assert answer(prelogin, b"c LOGOUT\r\n") == Answer(
        Then.CLOSE, b"* BYE Logging out.\r\n", b"c OK Logout completed.\r\n",
        close=Close.CLIENT_LOGOUT)
    assert answer(prelogin, b"d SELECT INBOX\r\n") == Answer(
        tagged=b"d BAD Command unknown or not allowed before login.\r\n", bad=True)


def test_login() -> None:
    prelogin, _ = machine()
    got = answer(prelogin, b'a LOGIN "jo" "se cret"\r\n')
    assert got.then is Then.LOGIN and got.tagged == b"" and got.login is not None
    assert (got.login.tag, got.login.credentials.user, got.login.credentials.password,
            got.login.credentials.mechanism) == (b"a", "jo", b"se cret", "LOGIN")
    assert answer(prelogin, b"b LOGIN jo\r\n") == Answer(
        tagged=b"b BAD LOGIN expects a user name and a password.\r\n", bad=True)
    assert answer(prelogin, b'c LOGIN "" pw\r\n') == Answer(
        tagged=b"c BAD Invalid user name\r\n", bad=True)


def test_authenticate_plain_with_initial_response_is_a_login() -> None:
    prelogin, _ = machine()
    ir = base64.b64encode(b"\0jo\0pw")
    got = answer(prelogin, b"a AUTHENTICATE PLAIN " + ir + b"\r\n")
    assert got.then is Then.LOGIN and got.login is not None
    assert (got.login.credentials.user, got.login.credentials.password,
            got.login.credentials.mechanism) == ("jo", b"pw", "PLAIN")
    assert answer(prelogin, b"b AUTHENTICATE PLAIN !!!!\r\n") == Answer(
        tagged=b"b BAD Invalid base64 data\r\n", bad=True)


@pytest.mark.parametrize("line, sasl", [
    (b"a AUTHENTICATE PLAIN\r\n", ("PLAIN", None)),
    (b"a AUTHENTICATE login\r\n", ("LOGIN", None)),
    (b"a AUTHENTICATE LOGIN am8=\r\n", ("LOGIN", b"am8=")),
])
def test_authenticate_needing_prompts_is_the_callers(line: bytes, sasl: tuple[str, bytes | None]
                                                     ) -> None:
    prelogin, _ = machine()
    assert answer(prelogin, line) == Answer(Then.SASL, sasl=sasl)


def test_authenticate_refusals() -> None:
    prelogin, _ = machine()
    assert answer(prelogin, b"a AUTHENTICATE CRAM-MD5\r\n") == Answer(
        tagged=b"a NO [CANNOT] Unsupported authentication mechanism.\r\n")
    assert answer(prelogin, b"b AUTHENTICATE XOAUTH2 eA==\r\n") == Answer(   # not passed through
        tagged=b"b NO [CANNOT] Unsupported authentication mechanism.\r\n")
    assert answer(prelogin, b"c AUTHENTICATE\r\n") == Answer(
        tagged=b"c BAD AUTHENTICATE expects a mechanism.\r\n", bad=True)


def test_token_mechanism_with_initial_response() -> None:
    prelogin, _ = machine(oauth2=True)
    message = base64.b64encode(b"user=jo\x01auth=Bearer tok\x01\x01")
    got = answer(prelogin, b"a AUTHENTICATE XOAUTH2 " + message + b"\r\n")
    assert got.then is Then.LOGIN and got.login is not None
    assert (got.login.credentials.user, got.login.credentials.mechanism) == ("jo", "XOAUTH2")


def test_starttls() -> None:
    prelogin, metrics = machine(tls="starttls")
    assert answer(prelogin, b"a STARTTLS\r\n") == Answer(
        Then.TLS, tagged=b"a OK Begin TLS negotiation now.\r\n")
    assert answer(prelogin, b"b STARTTLS\r\nc NOOP\r\n") == Answer(
        Then.CLOSE, tagged=b"b BAD Data after STARTTLS refused.\r\n",
        close=Close.STARTTLS_INJECTION)
    assert metrics.registry.get_sample_value("mailproxy_starttls_total", {
        "side": "client", "protocol": "imap", "result": "injection"}) == 1
    prelogin.session.tls = True
    assert answer(prelogin, b"d STARTTLS\r\n") == Answer(
        tagged=b"d BAD STARTTLS not available.\r\n", bad=True)
    plain, _ = machine()
    assert answer(plain, b"e STARTTLS\r\n") == Answer(
        tagged=b"e BAD STARTTLS not available.\r\n", bad=True)


def test_plaintext_refused_before_tls() -> None:
    prelogin, _ = machine(tls="starttls", client="192.0.2.9")
    assert b"LOGINDISABLED" in prelogin.capabilities()
    refused = b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure " \
              b"connections.\r\n"
    assert answer(prelogin, b"a LOGIN jo pw\r\n") == Answer(tagged=refused)
    required, _ = machine(tls="starttls", require_tls=True)
    assert answer(required, b"a AUTHENTICATE PLAIN AGpvAHB3\r\n") == Answer(
        Then.CLOSE, tagged=refused, last_words=b"* BYE TLS required: use STARTTLS.\r\n",
        close=Close.TLS_REQUIRED)
