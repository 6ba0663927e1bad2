"""Operations against the real proxy process: SIGTERM drain, SIGHUP reload, connection limits,
auth-failure throttling, PROXY protocol."""

from __future__ import annotations

import imaplib
import re
import signal
import socket
import time

import imapclient
import yaml

from support.polling import wait_for
from support.proxyproc import relay_config

HOST = "127.0.0.1"


def read_until(sock: socket.socket, marker: bytes, limit: float = 30.0) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:  # closed with our unread bytes pending: an RST
            break
        if not chunk:
            break
        data += chunk
    return data


def login_raw(port: int, user: tuple[str, str], source: str = HOST) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((HOST, port))
    sock.settimeout(30)
    assert read_until(sock, b"\r\n").startswith(b"* OK")
    sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert b"a OK" in read_until(sock, b"a ")
    return sock


def big_message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_sigterm_drains_idle_fetch_and_retr_then_exits_zero(proxy_factory, dovecot, user):
    name, password = user
    dovecot.deliver(name, big_message(8 * 1024 * 1024))
    config = relay_config(dovecot, allow_plaintext_auth=True)
    config["shutdown_timeout"] = "20s"
    proxy = proxy_factory(config)
    idler = imapclient.IMAPClient(HOST, port=proxy.port("imap"), ssl=False, timeout=30)
    idler.login(name, password)
    idler.select_folder("INBOX")
    idler.idle()
    fetcher = login_raw(proxy.port("imap"), user)
    fetcher.sendall(b"b SELECT INBOX\r\n")
    read_until(fetcher, b"b OK")
    fetcher.sendall(b"c FETCH 1 BODY.PEEK[]\r\n")
    fetched = fetcher.recv(65536)  # the FETCH is under way; the rest waits in the socket buffers
    pop = socket.create_connection((HOST, proxy.port("pop3")), timeout=30)
    read_until(pop, b"\r\n")
    pop.sendall(b"USER %s\r\nPASS %s\r\n" % (name.encode(), password.encode()))
    read_until(pop, b"Logged in")
    pop.sendall(b"RETR 1\r\n")
    retrieved = pop.recv(65536)

    proxy.send_signal(signal.SIGTERM)
    wait_for(lambda: "event=draining" in proxy.logs(), "the proxy to log event=draining")
    assert b"BYE" in b" ".join(str(r).encode() for r in idler.idle_check(timeout=30))
    fetched += read_until(fetcher, b"* BYE")
    assert b"c OK" in fetched and fetched.rstrip().endswith(b"* BYE Server shutting down.")
    assert len(fetched) > 8 * 1024 * 1024
    while True:  # POP3: the RETR completes, then the connection closes
        chunk = pop.recv(1 << 20)
        if not chunk:
            break
        retrieved += chunk
    assert retrieved.endswith(b"\r\n.\r\n") and len(retrieved) > 8 * 1024 * 1024
    assert proxy.wait(timeout=20) == 0
    assert "event=stopped" in proxy.logs()


def test_sighup_reload_new_route_keeps_open_session(proxy_factory, dovecot, dovecot_factory):
    second = dovecot_factory()
    old_user = dovecot.add_user()
    moved = second.add_user(name="moved@example.net")
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    proxy = proxy_factory(config)
    open_session = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    open_session.login(*old_user)
    # the new route: moved@example.net lives on the second Dovecot
    config = yaml.safe_load(proxy.config_path.read_text())
    config["upstreams"]["second"] = {"host": HOST, "imap": {"port": second.imap_port}}
    config["routes"].insert(0, {"match": "*@example.net", "upstream": "second"})
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in proxy.logs(), "the proxy to log event=reloaded")
    fresh = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    assert fresh.login(*moved)[0] == "OK"
    fresh.logout()
    # Dovecot's log process writes the Login line on its own time: wait for it, bounded
    wait_for(lambda: f"user=<{moved[0]}>" in second.log(), "the login in the second Dovecot's log")
    assert open_session.select("INBOX")[0] == "OK"  # untouched by the reload
    # an invalid file is rejected and the old config keeps working
    proxy.config_path.write_text("listeners: [}\n")
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reload_rejected" in proxy.logs(), "the proxy to log event=reload_rejected")
    again = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    assert again.login(*moved)[0] == "OK"
    again.logout()
    open_session.logout()


def refuse_and_release(proxy, user) -> None:
    """A listener of max_connections 3 and max_connections_per_ip 2: a third client of one IP
    and a fourth connection are refused with BYE [UNAVAILABLE], another IP is unaffected, and a
    slot comes back when its session ends."""
    port = proxy.port("imap")
    first = login_raw(port, user, "127.0.0.2")
    second = login_raw(port, user, "127.0.0.2")
    third = socket.socket()
    third.bind(("127.0.0.2", 0))
    third.connect((HOST, port))
    third.settimeout(30)
    assert read_until(third, b"\r\n") == \
        b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
    other_ip = login_raw(port, user, "127.0.0.3")   # another client is unaffected
    fourth = socket.create_connection((HOST, port), timeout=30)
    assert read_until(fourth, b"\r\n").startswith(b"* BYE [UNAVAILABLE]")   # listener full
    first.sendall(b"z LOGOUT\r\n")
    read_until(first, b"z OK")
    first.close()
    wait_for(lambda: re.search(r"event=session_end listener=imap client=127\.0\.0\.2:",
                               proxy.logs()), "the closed session's session_end")
    released = login_raw(port, user, "127.0.0.2")   # its slot came back
    released.sendall(b"z NOOP\r\n")
    assert b"z OK" in read_until(released, b"z ")
    for sock in (second, third, other_ip, fourth, released):
        sock.close()
    assert proxy.logs().count("limit=max_connections_per_ip") == 1
    assert proxy.logs().count("limit=max_connections ") + \
        proxy.logs().count("limit=max_connections\n") == 1


def test_connection_limits_refuse_and_release_on_trios_accept(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True,
                          max_connections=3, max_connections_per_ip=2)
    config["relay"] = {"engine_accept": False}   # (the engine's accept: test_relay_engine_accept)
    refuse_and_release(proxy_factory(config), user)


def test_auth_failure_throttling_blocks_then_releases(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["auth_throttle"] = {"base_delay": "10ms", "max_delay": "50ms", "block_after": 3,
                               "block_for": "6s"}   # the refusal below must come within it, loaded or not
    proxy = proxy_factory(config)
    name, password = user
    for _ in range(3):
        imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
        try:
            imap.login(name, "wrong")
        except imaplib.IMAP4.error as exc:
            assert "AUTHENTICATIONFAILED" in str(exc)
        imap.shutdown()

    def logs_in() -> bool:
        imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
        try:
            return imap.login(name, password)[0] == "OK"
        except imaplib.IMAP4.error as exc:   # refused before any upstream is asked
            assert "[UNAVAILABLE] Too many authentication failures" in str(exc), exc
            return False
        finally:
            imap.shutdown()

    assert not logs_in()   # the right password, but the user is blocked for now
    assert proxy.logs().count("result=throttled") == 1
    other = dovecot.add_user()
    sock = login_raw(proxy.port("imap"), other, "127.0.0.5")  # other users and IPs unaffected
    sock.close()
    sock = login_raw(proxy.port("imap"), user, "127.0.0.6")   # the user from elsewhere too (issue 14)
    sock.close()
    # block_for is 6 s of the proxy's clock: wait for it to run out (a refusal does not extend it)
    wait_for(logs_in, "the block to run out", timeout=30)


def test_proxy_protocol_v1_from_trusted_and_untrusted(proxy_factory, dovecot, user):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True,
                          proxy_protocol=True, trusted_proxies=["127.0.0.0/8"])
    config["upstreams"]["main"]["forward_client_ip"] = True
    proxy = proxy_factory(config)
    name, password = user
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=10)
    sock.sendall(b"PROXY TCP4 198.51.100.77 127.0.0.1 5555 143\r\n")
    assert read_until(sock, b"\r\n").startswith(b"* OK")
    sock.sendall(b"a LOGIN %s %s\r\nb LOGOUT\r\n" % (name.encode(), password.encode()))
    assert b"a OK" in read_until(sock, b"b OK")
    sock.close()
    wait_for(lambda: f"user=<{name}>, rip=198.51.100.77" in dovecot.log(),
             "the forwarded address in Dovecot's log")
    assert "client=198.51.100.77:5555" in proxy.logs()
    # no header from a trusted peer: refused, never sniffed
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=10)
    sock.sendall(b"a LOGIN x y\r\n")
    assert read_until(sock, b"\r\n") == b""
    sock.close()

    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True,
                          proxy_protocol=True, trusted_proxies=["10.0.0.0/8"])
    untrusting = proxy_factory(config)
    sock = socket.create_connection((HOST, untrusting.port("imap")), timeout=10)
    sock.sendall(b"PROXY TCP4 198.51.100.77 127.0.0.1 5555 143\r\n")
    assert read_until(sock, b"\r\n") == b""  # closed without a greeting
    sock.close()
    wait_for(lambda: "reason=untrusted" in untrusting.logs(), "the proxy to log reason=untrusted")
