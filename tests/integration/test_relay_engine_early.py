"""`connect_early:` with the relay engine's login (relay/engine_login.py, engine_login_route.py):
the connection begun at the client's accept carries the engine's early login (counted `used`,
the session logged in by the engine: `outcome=relay`), a session that never logs in closes it
(`unused`), and one dropped before the verdict (Dovecot restarted meanwhile) goes to trio, which
logs in on a fresh connection (`lost`, `outcome=trio`). Real Dovecot, imaplib."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import urllib.request

from support.polling import wait_for
from support.ports import free_ports
from support.proxyproc import relay_config

HOST = "127.0.0.1"


def outcomes(proxy) -> list[str]:
    return re.findall(r"event=relay_engine_login .*?outcome=(\w+)", proxy.logs())


def early_counts(proxy) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics",
                                  timeout=10).read().decode()
    pattern = (r'^mailproxy_upstream_connect_early_total\{protocol="imap",result="(\w+)",'
               r'upstream="main"\} (\S+)$')
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def early_config(dovecot) -> dict:
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["imap"]["connect_early"] = True
    config["upstreams"]["main"]["health_check_interval"] = "1h"
    return config


def log_in(proxy, name: str, password: str) -> None:
    client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    assert client.login(name, password)[0] == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_the_engine_logs_in_on_the_connection_begun_at_accept(proxy_factory, dovecot, user):
    name, password = user
    proxy = proxy_factory(early_config(dovecot))
    log_in(proxy, name, password)   # trio's: the greeting is learnt
    log_in(proxy, name, password)   # the engine's
    idle = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    idle.logout()
    wait_for(lambda: early_counts(proxy).get("unused") == 1, "the unused one counted")
    assert early_counts(proxy) == {"used": 2, "stale": 0, "unused": 1, "lost": 0}
    assert outcomes(proxy) == ["trio", "relay"]


def test_an_early_connection_dropped_goes_to_trio_fresh(proxy_factory, dovecot_factory):
    server = dovecot_factory(ports=tuple(free_ports(2)))
    name, password = server.add_user()
    proxy = proxy_factory(early_config(server))
    log_in(proxy, name, password)   # the greeting is learnt
    client = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    master = server.master_pid
    assert master is not None
    server.stop()
    try:
        os.killpg(master, signal.SIGKILL)   # its login processes too: the connection dies
    except ProcessLookupError:
        pass
    server.start()
    assert client.login(name, password)[0] == "OK"
    client.logout()
    assert early_counts(proxy) == {"used": 2, "stale": 0, "unused": 0, "lost": 1}
    assert outcomes(proxy) == ["trio", "trio"]
