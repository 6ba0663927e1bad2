"""The POP3 relay against a real Dovecot pop3d, driven by poplib, raw sockets, fetchmail, curl."""

from __future__ import annotations

import hashlib
import os
import poplib
import socket

import pytest

from support.proxyproc import relay_config

HOST = "127.0.0.1"


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + os.urandom(6).hex().encode() + b"@example.com>\r\n\r\n" + body)


def pop(proxy) -> poplib.POP3:
    return poplib.POP3(HOST, proxy.port("pop3"), timeout=30)


def test_full_poplib_session(relay_proxy, dovecot, user):
    name, password = user
    dotted = message("dots", b".leading dot\r\n..two dots\r\n.\r\nend\r\n")
    big = message("big", b"".join(b"%08d " % i + os.urandom(30).hex().encode() + b"\r\n"
                                  for i in range(20 * 1024 * 1024 // 70)))
    dovecot.deliver(name, dotted)
    dovecot.deliver(name, big)
    client = pop(relay_proxy)
    assert client.getwelcome().startswith(b"+OK")
    assert client.user(name).startswith(b"+OK")
    assert client.pass_(password).startswith(b"+OK")
    count, size = client.stat()
    assert count == 2
    assert size == len(dotted) + len(big)
    _, listing, _ = client.list()
    assert [int(line.split()[1]) for line in listing] == [len(dotted), len(big)]
    _, uidls, _ = client.uidl()
    assert len(uidls) == 2
    _, top, _ = client.top(1, 0)
    assert b"Subject: dots" in top
    _, lines, _ = client.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == dotted
    _, lines, octets = client.retr(2)
    assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").digest() == hashlib.sha256(big).digest()
    assert client.dele(1).startswith(b"+OK")
    assert client.rset().startswith(b"+OK")
    assert client.noop().startswith(b"+OK")
    capa = client.capa()
    assert "UIDL" in capa and "STLS" not in capa and "SASL" not in capa
    assert client.quit().startswith(b"+OK")
    again = pop(relay_proxy)
    again.user(name)
    again.pass_(password)
    assert again.stat()[0] == 2  # RSET undid the DELE
    again.quit()


def test_pipelined_commands(relay_proxy, dovecot, user):
    name, password = user
    dovecot.deliver(name, message("one"))
    sock = socket.create_connection((HOST, relay_proxy.port("pop3")), timeout=10)
    file = sock.makefile("rb")
    assert file.readline().startswith(b"+OK")
    sock.sendall(b"USER %s\r\nPASS %s\r\n" % (name.encode(), password.encode()))
    assert file.readline().startswith(b"+OK")
    assert file.readline().startswith(b"+OK")
    sock.sendall(b"STAT\r\nLIST\r\nCAPA\r\nUIDL 1\r\nRETR 1\r\nQUIT\r\n")
    reply = file.read()
    assert reply.startswith(b"+OK 1 ")
    assert b"\r\nPIPELINING\r\n" in reply and b"STLS" not in reply
    capa = reply.index(b"Capability list")  # answered by the proxy, in order:
    assert reply.index(b"messages:") < capa < reply.index(b"\r\n+OK 1 ", capa)  # LIST, CAPA, UIDL
    assert b"Subject: one" in reply and reply.rstrip().endswith(b"+OK Logging out.")
    sock.close()


def test_auth_plain_and_wrong_password(relay_proxy, user):
    name, password = user
    import base64

    sock = socket.create_connection((HOST, relay_proxy.port("pop3")), timeout=10)
    file = sock.makefile("rb")
    file.readline()
    token = base64.b64encode(f"\0{name}\0{password}x".encode())
    sock.sendall(b"AUTH PLAIN " + token + b"\r\n")
    assert file.readline().startswith(b"-ERR [AUTH]")
    sock.sendall(b"AUTH PLAIN\r\n")
    assert file.readline().startswith(b"+ ")
    sock.sendall(base64.b64encode(f"\0{name}\0{password}".encode()) + b"\r\n")
    assert file.readline().startswith(b"+OK")
    sock.sendall(b"QUIT\r\n")
    assert file.readline().startswith(b"+OK")
    sock.close()


def test_upstream_down_is_sys_temp(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("pop3",), allow_plaintext_auth=True)
    sock = socket.socket()
    sock.bind((HOST, 0))
    config["upstreams"]["main"]["pop3"]["port"] = sock.getsockname()[1]
    sock.close()
    proxy = proxy_factory(config)
    client = poplib.POP3(HOST, proxy.port("pop3"), timeout=10)
    client.user(user[0])
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        client.pass_(user[1])


def test_forward_client_ip_sends_xclient(proxy_factory, dovecot, user):
    """Dovecot offers XCLIENT in its greeting; with forward_client_ip its login log line shows
    the client's address, not the proxy's."""
    config = relay_config(dovecot, listeners=("pop3",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["forward_client_ip"] = True
    proxy = proxy_factory(config)
    sock = socket.socket()
    sock.bind(("127.0.0.7", 0))
    sock.connect((HOST, proxy.port("pop3")))
    file = sock.makefile("rb")
    assert file.readline().startswith(b"+OK")
    name, password = user
    sock.sendall(b"USER %s\r\nPASS %s\r\nQUIT\r\n" % (name.encode(), password.encode()))
    assert file.readline().startswith(b"+OK") and file.readline().startswith(b"+OK Logged in")
    sock.close()
    dovecot.wait_for_log(f"user=<{name}>, rip=127.0.0.7")
