"""Reuse of authenticated upstream IMAP connections (`upstreams.NAME.imap.reuse`, off by default;
proxy/relay/upstream_pool.py, engine_reuse.py), against a real Dovecot with imaplib and raw
sockets: a second session of the same user with the same password takes the first one's logged-
in connection (Dovecot sees one login for both); a wrong password is refused even with a
connection parked; a session that ENABLEd leaves nothing behind, one that selected a mailbox
leaves the next in the authenticated state without expunging anything (UNSELECT, never CLOSE); a
client closing at rest without LOGOUT parks its connection too; `max_age` sends a later login to
the upstream again; without `reuse:` every session logs in upstream. The first login of a run is
trio's (the engine learns the upstream's greeting from it) and never parks anything.
"""

from __future__ import annotations

import base64
import imaplib
import re
import signal
import socket

import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_operations import read_until
from .test_relay_engine_login import learn_greeting, metric

HOST = "127.0.0.1"


def make_proxy(proxy_factory, dovecot, reuse: dict | None):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    main = config["upstreams"]["main"]
    main["health_check_interval"] = "1h"
    if reuse is not None:
        main["imap"]["reuse"] = reuse
    return proxy_factory(config)


@pytest.fixture
def proxy(proxy_factory, dovecot):
    return make_proxy(proxy_factory, dovecot, {"max_age": "1h", "max_idle": "1h"})


def reuse(proxy, outcome: str) -> float:
    return metric(proxy, "mailproxy_upstream_reuse_total", upstream="main", outcome=outcome)


def upstream_logins(dovecot, name: str) -> int:
    return len(re.findall(rf"imap-login: Info: Login: user=<{re.escape(name)}>", dovecot.log()))


def settled_logins(dovecot, name: str) -> int:
    """Dovecot's logins of `name` so far: a fresh user's login is waited for first, so that
    every line written before it is in the log (Dovecot writes it in order)."""
    other = dovecot.add_user()
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    imap.login(*other)
    imap.logout()
    wait_for(lambda: upstream_logins(dovecot, other[0]) == 1, what="the witness's login")
    return upstream_logins(dovecot, name)


def session(proxy, user, *commands) -> bytes:
    """A session through the proxy: login, `commands` (imaplib calls), logout; the login's
    response code."""
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    typ, data = imap.login(*user)
    assert typ == "OK"
    for call in commands:
        call(imap)
    assert imap.logout()[0] == "BYE"
    return data[0]


def raw_login(proxy, user, source: str = HOST) -> socket.socket:
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30,
                                    source_address=(source, 0))
    read_until(sock, b"\r\n")
    sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert read_until(sock, b"\r\n").startswith(b"a OK [CAPABILITY IMAP4rev1 ")
    return sock


def ask(sock: socket.socket, line: bytes) -> bytes:
    """`line`'s responses, to its tagged one."""
    done = re.compile(rb"(?:^|\r\n)" + re.escape(line.split(b" ", 1)[0]) + rb" [^\r\n]*\r\n$")
    sock.sendall(line + b"\r\n")
    received = b""
    while not done.search(received):
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {received!r}"
        received += chunk
    return received


def test_a_second_session_takes_the_first_ones_upstream_login(proxy, dovecot, user):
    learn_greeting(proxy, user)
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")
    first = session(proxy, user, lambda imap: imap.select("INBOX"))
    wait_for(lambda: reuse(proxy, "parked") == 1, what="the first session's connection parked")
    assert reuse(proxy, "miss") == 1

    def reads(imap):
        assert imap.select("INBOX") == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: one\r\n\r\n"

    second = session(proxy, user, reads)
    assert second == first   # the same answer as a fresh login, CAPABILITY code included
    assert reuse(proxy, "hit") == 1
    wait_for(lambda: reuse(proxy, "parked") == 2, what="the second session's connection parked")
    # learn_greeting's (trio's) login and the first session's: none for the second
    assert settled_logins(dovecot, user[0]) == 2
    assert metric(proxy, "mailproxy_auth_attempts_total", protocol="imap", mechanism="LOGIN",
                  result="success") == 3


def test_a_wrong_password_is_refused_with_a_connection_parked(proxy, dovecot, user):
    learn_greeting(proxy, user)
    session(proxy, user)
    wait_for(lambda: reuse(proxy, "parked") == 1, what="a connection parked")
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.login(user[0], user[1] + "x")
    imap.shutdown()
    assert reuse(proxy, "hit") == 0
    assert reuse(proxy, "miss") == 2   # (the first session's, and this one)
    # Dovecot was asked (its refusal is what the client got); the user's parked connection is
    # closed (another password: a changed one would make it useless)
    assert settled_logins(dovecot, user[0]) == 2
    assert reuse(proxy, "superseded") == 1


def test_a_session_that_enabled_leaves_nothing_behind(proxy, dovecot, user):
    learn_greeting(proxy, user)
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")
    # (imaplib's enable() looks for ENABLE in the greeting's capabilities: not there)
    session(proxy, user, lambda imap: imap._simple_command("ENABLE", "CONDSTORE"))
    wait_for(lambda: reuse(proxy, "unparkable") + reuse(proxy, "parked") == 1,
             what="the ENABLEd session's end judged")
    sock = raw_login(proxy, user)
    selected = ask(sock, b"s SELECT INBOX")
    assert b"\r\ns OK [READ-WRITE] Select completed" in selected
    # Dovecot announces HIGHESTMODSEQ at SELECT only once CONDSTORE is on (RFC 7162 3.1)
    assert b"HIGHESTMODSEQ" not in selected
    assert ask(sock, b"z LOGOUT").startswith(b"* BYE ")
    sock.close()
    assert (reuse(proxy, "unparkable"), reuse(proxy, "hit")) == (1, 0)
    assert settled_logins(dovecot, user[0]) == 3


def test_a_session_that_selected_leaves_the_next_unselected_and_expunges_nothing(
        proxy, dovecot, user):
    learn_greeting(proxy, user)
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")

    def deletes(imap):
        assert imap.select("INBOX") == ("OK", [b"1"])
        assert imap.store("1", "+FLAGS", "\\Deleted")[0] == "OK"

    session(proxy, user, deletes)
    wait_for(lambda: reuse(proxy, "parked") == 1, what="the selecting session's parked")
    sock = raw_login(proxy, user)
    assert reuse(proxy, "hit") == 1
    # authenticated state, nothing selected (RFC 3501 6.4: CHECK needs one)
    assert ask(sock, b"c CHECK").startswith(b"c BAD ")
    # UNSELECT, not CLOSE: the message flagged \\Deleted is still there
    assert ask(sock, b"s STATUS INBOX (MESSAGES)").startswith(
        b"* STATUS INBOX (MESSAGES 1)\r\ns OK Status completed")
    sock.close()


def test_a_client_that_closes_at_rest_leaves_its_connection_parked(proxy, dovecot, user):
    learn_greeting(proxy, user)
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    imap.login(*user)
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.shutdown()   # no LOGOUT: the end of stream, with nothing in flight
    wait_for(lambda: reuse(proxy, "parked") == 1, what="the closed session's connection parked")
    sock = raw_login(proxy, user)
    assert reuse(proxy, "hit") == 1
    assert ask(sock, b"c CHECK").startswith(b"c BAD ")   # nothing selected: UNSELECT was sent
    sock.close()
    assert settled_logins(dovecot, user[0]) == 2


def test_a_login_past_max_age_logs_in_upstream_again(proxy_factory, dovecot, user):
    proxy = make_proxy(proxy_factory, dovecot, {"max_age": "300ms", "max_idle": "1h"})
    learn_greeting(proxy, user)
    session(proxy, user)   # logs in upstream; parked (if younger than max_age at its end)

    # Sessions until one logs in upstream again. Each one younger than max_age may take the
    # parked connection (a hit) and park it again; the chain ends at max_age, either at a take
    # (`expired`) or at a LOGOUT that finds it too old to park (`unparkable`, the next login
    # then finds nothing: a miss too). Waiting for "expired or unparkable" instead left the
    # second miss to chance: a hit whose LOGOUT came past max_age ended the wait with 1 miss.
    def logged_in_again() -> bool:
        session(proxy, user)
        return reuse(proxy, "miss") >= 2

    wait_for(logged_in_again, what="a login past max_age sent to the upstream again")
    assert reuse(proxy, "expired") + reuse(proxy, "unparkable") >= 1   # max_age did it
    assert reuse(proxy, "closed") + reuse(proxy, "idle") == 0
    # every miss was a login at Dovecot, and only they were (and learn_greeting's)
    assert settled_logins(dovecot, user[0]) == 1 + reuse(proxy, "miss")


def test_authenticate_plain_with_an_initial_response_takes_a_parked_connection(
        proxy, dovecot, user):
    learn_greeting(proxy, user)
    first = session(proxy, user)
    wait_for(lambda: reuse(proxy, "parked") == 1, what="a connection parked")
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    read_until(sock, b"\r\n")
    plain = base64.b64encode(b"\x00" + user[0].encode() + b"\x00" + user[1].encode())
    answer = ask(sock, b"a AUTHENTICATE PLAIN " + plain)   # SASL-IR (RFC 4959)
    assert answer == b"a OK " + first + b"\r\n"
    assert reuse(proxy, "hit") == 1
    sock.close()
    assert settled_logins(dovecot, user[0]) == 2


def test_with_forward_client_ip_a_connection_is_reused_only_for_its_clients_address(
        proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    main = config["upstreams"]["main"]
    main.update(health_check_interval="1h", forward_client_ip=True)
    main["imap"]["reuse"] = {"max_age": "1h", "max_idle": "1h"}
    proxy = proxy_factory(config)
    learn_greeting(proxy, user)
    for number, source in enumerate(("127.0.0.1", "127.0.0.2", "127.0.0.2"), 1):
        sock = raw_login(proxy, user, source)
        assert ask(sock, b"z LOGOUT").startswith(b"* BYE ")
        sock.close()
        wait_for(lambda number=number: reuse(proxy, "parked") == number,
                 what=f"the session from {source} parked")
    # the first session of each address logged in upstream (Dovecot learnt its address from
    # the ID), the second one from 127.0.0.2 took its own address's connection
    assert (reuse(proxy, "miss"), reuse(proxy, "hit")) == (2, 1)
    assert settled_logins(dovecot, user[0]) == 3
    assert re.search(rf"Login: user=<{re.escape(user[0])}>, [^\n]*rip=127\.0\.0\.2",
                     dovecot.log())


def test_a_reload_empties_the_pool(proxy, dovecot, user):
    learn_greeting(proxy, user)
    session(proxy, user)
    wait_for(lambda: reuse(proxy, "parked") == 1, what="a connection parked")
    proxy.send_signal(signal.SIGHUP)   # (routing may have changed)
    wait_for(lambda: "event=reloaded" in proxy.logs(), what="the reload")

    def emptied() -> bool:   # (the first login after a reload may be trio's again)
        session(proxy, user)
        return reuse(proxy, "emptied") == 1

    wait_for(emptied, what="the old runtime's connection dropped at a login")
    assert reuse(proxy, "hit") == 0


def test_reuse_is_off_by_default(proxy_factory, dovecot, user):
    proxy = make_proxy(proxy_factory, dovecot, None)
    learn_greeting(proxy, user)
    session(proxy, user, lambda imap: imap.select("INBOX"))
    session(proxy, user, lambda imap: imap.select("INBOX"))
    assert settled_logins(dovecot, user[0]) == 3
    with pytest.raises(AssertionError, match="no mailproxy_upstream_reuse_total"):
        reuse(proxy, "miss")
