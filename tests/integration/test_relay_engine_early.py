"""`connect_early:` with the relay engine's accept and login (relay/engine_accept.py,
engine_login.py, engine_login_route.py): the engine's thread accepts the client and begins the
upstream's connect (mailproxy_relay_engine_accepted_total counts the listener's sessions); that
connection carries the engine's early login (counted `used`, the session logged in by the
engine: `outcome=relay`), a session that never logs in closes it (`unused`), and one dropped
before the verdict (Dovecot restarted meanwhile) goes to trio, which logs in on a fresh
connection (`lost`, `outcome=trio`). A session the engine hands to trio before its login (SASL
prompts) logs in on the connection begun at the engine's accept; a drain and a reload reach
sessions the engine accepted so. Real Dovecot, imaplib."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import urllib.request

import yaml

from support.polling import wait_for
from support.ports import free_ports
from support.proxyproc import relay_config

from .test_operations import login_raw, read_until
from .test_relay_engine_accept import drain_both
from .test_relay_engine_login import metric

HOST = "127.0.0.1"


def outcomes(proxy) -> list[str]:
    return re.findall(r"event=relay_engine_login .*?outcome=(\w+)", proxy.logs())


def early_counts(proxy) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics",
                                  timeout=10).read().decode()
    pattern = (r'^mailproxy_upstream_connect_early_total\{protocol="imap",result="(\w+)",'
               r'upstream="main"\} (\S+)$')
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def accepted(proxy) -> float:
    return metric(proxy, "mailproxy_relay_engine_accepted_total", listener="imap")


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
    assert accepted(proxy) == 3   # (every session accepted by the engine's thread)
    wait_for(lambda: metric(proxy, "mailproxy_connections_active", listener="imap") == 0,
             what="no active connection")
    assert not proxy.tracebacks()


def test_a_session_handed_to_trio_logs_in_on_the_early_connection(proxy_factory, dovecot, user):
    name, password = user
    proxy = proxy_factory(early_config(dovecot))
    log_in(proxy, name, password)   # trio's login: the greeting is learnt
    with imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30) as imap:   # SASL prompts: trio's
        typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{name}\0{password}".encode())
        assert typ == "OK"
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
    wait_for(lambda: metric(proxy, "mailproxy_connections_active", listener="imap") == 0,
             what="no active connection")
    assert early_counts(proxy) == {"used": 2, "stale": 0, "unused": 0, "lost": 0}
    assert accepted(proxy) == 2
    assert outcomes(proxy) == ["trio"]   # (the second never reached the engine's login)
    assert not proxy.tracebacks()


def test_drain_and_reload_while_the_engine_accepts_early(proxy_factory, dovecot, user):
    name, password = user
    proxy = proxy_factory(early_config(dovecot))
    log_in(proxy, name, password)
    config = yaml.safe_load(proxy.config_path.read_text())
    config["listeners"][0]["max_connections_per_ip"] = 2
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in proxy.logs(), what="event=reloaded")
    log_in(proxy, name, password)   # (a reload forgets the greeting: trio's login learns it)
    wait_for(lambda: metric(proxy, "mailproxy_connections_active", listener="imap") == 0,
             what="no active connection")   # (imaplib's close races the per-IP count)
    waiting = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    assert read_until(waiting, b"\r\n").startswith(b"* OK [CAPABILITY")   # greeted, no login
    relayed = login_raw(proxy.port("imap"), user)
    relayed.sendall(b"s SELECT INBOX\r\n")
    read_until(relayed, b"s OK")
    refused = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    assert read_until(refused, b"\r\n").startswith(b"* BYE [UNAVAILABLE]")   # the new limit
    refused.close()
    assert accepted(proxy) == 4 and outcomes(proxy) == ["trio", "trio", "relay"]
    drain_both(proxy, waiting, relayed)


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
    assert accepted(proxy) == 2
