"""gateway.background_poll: after one login, new upstream mail is ingested with no session open,
using the password stored encrypted (gateway.key_file)."""

from __future__ import annotations

import base64
import imaplib
import os
import urllib.request

from support.polling import wait_for

HOST = "127.0.0.1"


def ingested(proxy) -> float:
    text = urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith("mailproxy_gateway_ingested_messages_total "):
            return float(line.split()[1])
    raise AssertionError("mailproxy_gateway_ingested_messages_total missing")


def test_background_poll_ingests_without_sessions(proxy_factory, dovecot, tmp_path):
    name, password = dovecot.add_user()
    dovecot.deliver(name, b"Subject: first\r\n\r\nbody\r\n")
    key_file = tmp_path / "store.key"
    key_file.write_text("k1:" + base64.b64encode(os.urandom(32)).decode() + "\n")
    config = {
        "listeners": [{"name": "gw", "protocol": "imap", "mode": "gateway",
                       "address": "127.0.0.1:0"}],
        "upstreams": {"main": {"host": HOST, "pop3": {"port": dovecot.pop3_port}}},
        "routes": [{"match": "*", "upstream": "main"}],
        "gateway": {"store": str(tmp_path / "gw.db"), "poll_interval": "1s",
                    "key_file": str(key_file), "background_poll": True},
        "metrics": {"address": "127.0.0.1:0"},
    }
    proxy = proxy_factory(config)
    imap = imaplib.IMAP4(HOST, proxy.port("gw"), timeout=20)
    imap.login(name, password)
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
    before = ingested(proxy)
    dovecot.deliver(name, b"Subject: second\r\n\r\nbody\r\n")
    wait_for(lambda: ingested(proxy) >= before + 1, "the background poll to fetch the new message")
    assert ingested(proxy) == before + 1  # fetched with no session open, exactly once
    # the stored password is encrypted: it is nowhere in the store files
    for path in tmp_path.glob("gw.db*"):
        assert password.encode() not in path.read_bytes()
