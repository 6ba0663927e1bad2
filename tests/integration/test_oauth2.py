"""OAuth2 passthrough end to end: SASL XOAUTH2 and OAUTHBEARER (RFC 7628) from the client, relayed
by mailproxy to a real Dovecot whose `oauth2` passdb checks each token against a local
introspection service (tests/support/oauth2service.py). A good token logs in (IMAP and POP3);
a refused one gets Dovecot's own error challenge (`+ base64(json)`), relayed byte for byte, and
after the client's dummy response the final NO / -ERR. Tokens never reach the proxy's log."""

from __future__ import annotations

import base64
import imaplib
import socket

import pytest

from support.dovecot import start_dovecot
from support.oauth2service import OAuth2Service

USER = "ann@oauth.example"
GOOD, BAD = "tok-good-4f1c2e", "tok-revoked-9a7b"
# Dovecot 2.3's error challenges: Google's form for XOAUTH2, RFC 7628 3.2.2's for OAUTHBEARER
ERROR_JSON = {"XOAUTH2": b'{"status":"401","schemes":"bearer","scope":"mail"}',
              "OAUTHBEARER": b'{"status":"invalid_token"}'}


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str) -> bytes:
    return f"n,a={user},\x01host=mail.example\x01auth=Bearer {token}\x01\x01".encode()


@pytest.fixture(scope="module")
def oauth(dovecot_root, tmp_path_factory):
    service = OAuth2Service({GOOD: USER})
    dovecot = start_dovecot(dovecot_root, extra_config=service.dovecot_config(dovecot_root))
    dovecot.add_user(USER, "unused-password")
    dovecot.deliver(USER, b"Subject: hello\r\n\r\nx\r\n")
    yield service, dovecot
    dovecot.stop()
    service.stop()


@pytest.fixture
def proxy(oauth, proxy_factory):
    _, dovecot = oauth
    listener = {"address": "127.0.0.1:0", "allow_plaintext_auth": True, "oauth2_passthrough": True}
    return proxy_factory({
        "listeners": [{"name": "imap", "protocol": "imap", **listener},
                      {"name": "pop3", "protocol": "pop3", **listener}],
        "upstreams": {"main": {"host": dovecot.host, "imap": {"port": dovecot.imap_port},
                               "pop3": {"port": dovecot.pop3_port}}},
        "routes": [{"match": "*", "upstream": "main"}],
        "auth_throttle": {"enabled": False},
    })


class Raw:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.parametrize("mechanism, message", [("XOAUTH2", xoauth2), ("OAUTHBEARER", oauthbearer)])
def test_imap_token_logs_in(oauth, proxy, mechanism, message) -> None:
    with imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=15) as imap:
        assert f"AUTH={mechanism}" in imap.capabilities
        typ, _ = imap.authenticate(mechanism, lambda _: message(USER, GOOD))
        assert typ == "OK"
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"])
        imap.logout()
    logs = proxy.logs()
    assert GOOD not in logs and base64.b64encode(message(USER, GOOD)).decode() not in logs
    assert f"user={USER}" in logs


def challenge_from(port: int, mechanism: str, message: bytes) -> tuple[bytes, bytes]:
    """(the `+` line, the final reply) of a refused AUTHENTICATE with SASL-IR."""
    raw = Raw(port)
    try:
        plus = raw.ask(b"a AUTHENTICATE %s %s" % (mechanism.encode(), base64.b64encode(message)))
        answer = b"AQ==" if mechanism == "OAUTHBEARER" else b""
        return plus, raw.ask(answer)
    finally:
        raw.close()


@pytest.mark.parametrize("mechanism, message", [("XOAUTH2", xoauth2), ("OAUTHBEARER", oauthbearer)])
def test_imap_refused_token_relays_the_challenge(oauth, proxy, mechanism, message) -> None:
    _, dovecot = oauth
    direct_plus, direct_final = challenge_from(dovecot.imap_port, mechanism, message(USER, BAD))
    plus, final = challenge_from(proxy.port("imap"), mechanism, message(USER, BAD))
    assert plus == direct_plus  # Dovecot's own challenge, byte for byte
    assert plus.startswith(b"+ ") and base64.b64decode(plus[2:].strip()) == ERROR_JSON[mechanism]
    assert direct_final == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert final == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert BAD not in proxy.logs()


def test_imap_cancelled_challenge(oauth, proxy) -> None:
    raw = Raw(proxy.port("imap"))
    try:
        plus = raw.ask(b"a AUTHENTICATE XOAUTH2 " + base64.b64encode(xoauth2(USER, BAD)))
        assert plus.startswith(b"+ ")
        assert raw.ask(b"*") == b"a BAD Authentication cancelled.\r\n"
        assert raw.ask(b"b NOOP") == b"b OK NOOP completed.\r\n"
    finally:
        raw.close()


def test_imap_overlong_answer_to_the_challenge(oauth, proxy) -> None:
    """The login has failed whatever the answer: its NO, then the session goes on."""
    raw = Raw(proxy.port("imap"))
    try:
        plus = raw.ask(b"a AUTHENTICATE XOAUTH2 " + base64.b64encode(xoauth2(USER, BAD)))
        assert plus.startswith(b"+ ")
        assert raw.ask(b"A" * 10_000) == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        assert raw.ask(b"b NOOP") == b"b OK NOOP completed.\r\n"
    finally:
        raw.close()


def test_pop3_tokens(oauth, proxy) -> None:
    raw = Raw(proxy.port("pop3"))
    try:
        assert raw.ask(b"AUTH XOAUTH2 " + base64.b64encode(xoauth2(USER, GOOD))).startswith(b"+OK")
        assert raw.ask(b"STAT").startswith(b"+OK 1 ")
    finally:
        raw.close()
    raw = Raw(proxy.port("pop3"))
    try:
        plus = raw.ask(b"AUTH OAUTHBEARER " + base64.b64encode(oauthbearer(USER, BAD)))
        assert plus.startswith(b"+ ") and base64.b64decode(plus[2:].strip()) == \
            ERROR_JSON["OAUTHBEARER"]
        assert raw.ask(b"AQ==") == b"-ERR [AUTH] Authentication failed.\r\n"
    finally:
        raw.close()
    assert GOOD not in proxy.logs() and BAD not in proxy.logs()


def test_tokens_need_the_listener_option(oauth, proxy_factory) -> None:
    _, dovecot = oauth
    plain = proxy_factory({
        "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1:0",
                       "allow_plaintext_auth": True}],
        "upstreams": {"main": {"host": dovecot.host, "imap": {"port": dovecot.imap_port}}},
        "routes": [{"match": "*", "upstream": "main"}],
    })
    raw = Raw(plain.port("imap"))
    try:
        assert b"XOAUTH2" not in raw.greeting
        assert raw.ask(b"a AUTHENTICATE XOAUTH2 " + base64.b64encode(xoauth2(USER, GOOD))) == \
            b"a NO [CANNOT] Unsupported authentication mechanism.\r\n"
    finally:
        raw.close()
