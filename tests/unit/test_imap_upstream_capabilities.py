"""What the relay knows of an upstream IMAP server's capabilities (relay/imap_upstream.py): `has()`
answers for the capabilities the connection holds *now* (they are replaced after STARTTLS, by the
greeting of an early login, by the login's CAPABILITY code), whatever their case."""

from __future__ import annotations

from typing import Any

from proxy.relay.imap_upstream import UpstreamIMAP, capabilities_from, relayable


def _upstream(raw: bytes) -> UpstreamIMAP:
    channel: Any = None   # has() and the capabilities need no connection
    return UpstreamIMAP(channel, capabilities_from(raw))


def test_has_ignores_case() -> None:
    up = _upstream(b"IMAP4rev1 sasl-ir AUTH=PLAIN Literal+")
    assert up.has(b"SASL-IR") and up.has(b"literal+") and up.has(b"auth=plain")
    assert not up.has(b"STARTTLS") and not up.has(b"AUTH")


def test_has_follows_each_new_list() -> None:
    up = _upstream(b"IMAP4rev1 STARTTLS LOGINDISABLED")
    assert up.has(b"STARTTLS") and up.has(b"LOGINDISABLED")
    up.capabilities = ()   # RFC 3501 6.2.1: forgotten after STARTTLS
    assert not up.has(b"STARTTLS") and not up.has(b"IMAP4rev1")
    up.capabilities = capabilities_from(b"IMAP4rev1 AUTH=PLAIN")
    assert up.has(b"AUTH=PLAIN") and not up.has(b"LOGINDISABLED")
    # a list equal to an earlier one but another object (another greeting) is looked at again
    up.capabilities = tuple(b"IMAP4rev1 STARTTLS LOGINDISABLED".split())
    assert up.has(b"LOGINDISABLED") and not up.has(b"AUTH=PLAIN")


def test_relayable_drops_what_cannot_be_relayed() -> None:
    caps = capabilities_from(b"IMAP4rev1 SASL-IR AUTH=PLAIN STARTTLS COMPRESS=DEFLATE "
                             b"COMPRESS=XZ LOGINDISABLED X-FOO IDLE")
    assert relayable(caps) == (b"IMAP4rev1", b"COMPRESS=DEFLATE", b"IDLE")
