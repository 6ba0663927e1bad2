"""The admin endpoint and its verbs against a real proxy in front of Dovecot: `who` lists a live
IMAP and a live POP3 session, `kick USER` ends the IMAP one (with BYE) and not the POP3 one,
`kick IP` ends the rest, `reload` reloads, and a wrong token is refused. On the Unix socket: no
token, the configured file mode, a stale socket file replaced, the file removed at exit, and
`who` counting each session's bytes exactly as the client sent and received them."""

from __future__ import annotations

import http.client
import imaplib
import json
import os
import poplib
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from support.dovecot import free_ports
from support.polling import wait_for
from support.proxyproc import relay_config


def verb(proxy, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args, "--config",
                           str(proxy.config_path)], capture_output=True, text=True, timeout=60)


def test_who_kick_reload(proxy_factory, dovecot, tmp_path):
    (tmp_path / "admin.token").write_text("s3cret-token\n")
    (port,) = free_ports(1)
    config = relay_config(dovecot, allow_plaintext_auth=True)
    config["admin"] = {"address": f"127.0.0.1:{port}",
                       "token": {"file": str(tmp_path / "admin.token")}}
    proxy = proxy_factory(config)
    imap_user, imap_password = dovecot.add_user()
    pop_user, pop_password = dovecot.add_user()
    imap = imaplib.IMAP4("127.0.0.1", proxy.port("imap"))
    imap.login(imap_user, imap_password)
    pop = poplib.POP3("127.0.0.1", proxy.port("pop3"))
    pop.user(pop_user)
    pop.pass_(pop_password)

    who = verb(proxy, "who")
    assert who.returncode == 0, who.stderr
    header, *rows = who.stdout.splitlines()
    assert header.split() == ["listener", "protocol", "user", "client", "upstream", "tls",
                              "since", "commands", "bytes_in", "bytes_out"]
    sessions = {tuple(row.split()[:5]) for row in rows}
    assert sessions == {("imap", "imap", imap_user, "127.0.0.1", "main"),
                        ("pop3", "pop3", pop_user, "127.0.0.1", "main")}

    kicked = verb(proxy, "kick", imap_user)
    assert (kicked.returncode, kicked.stdout) == (0, f"kicked 1 session(s) of user {imap_user}\n")
    assert imap.readline() == b"* BYE Disconnected by the administrator.\r\n"
    assert imap.readline() == b""
    assert pop.stat()[0] == 0                      # the other session is untouched
    assert [row.split()[2] for row in verb(proxy, "who").stdout.splitlines()[1:]] == [pop_user]

    by_ip = verb(proxy, "kick", "127.0.0.1")
    assert by_ip.stdout == "kicked 1 session(s) of ip 127.0.0.1\n"
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        pop.stat()

    reloaded = verb(proxy, "reload")
    assert (reloaded.returncode, reloaded.stdout) == (0, "reloaded\n")
    assert "event=reloaded" in proxy.logs()

    request = urllib.request.Request(f"http://127.0.0.1:{port}/sessions",
                                     headers={"Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_verbs_without_admin_section(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("listeners: [{name: imap, protocol: imap, address: 127.0.0.1:1143}]\n"
                      "upstreams: {main: {host: 127.0.0.1, imap: {port: 143}}}\n"
                      "routes: [{match: '*', upstream: main}]\n")
    result = subprocess.run([sys.executable, "-m", "proxy", "who", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"{config}: no admin: section; add admin: {{socket: "
                             f"/run/mailproxy/admin.sock}} and restart mailproxy\n")


def read_until_tagged(sock: socket.socket, tag: bytes, received: bytes = b"") -> bytes:
    """Read until the tagged reply line `tag ...\r\n` is complete (bounded by the timeout)."""
    while not (b"\r\n" + tag + b" " in b"\r\n" + received and received.endswith(b"\r\n")):
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    return received


def raw_imap_login(port: int, user: str, password: str) -> tuple[socket.socket, int, int]:
    """Log in with exact bytes; (the open socket, bytes sent, bytes received)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        greeting += sock.recv(4096)
    command = f"a LOGIN {user} {password}\r\n".encode()
    sock.sendall(command)
    return sock, len(command), len(read_until_tagged(sock, b"a", greeting))


def sessions_over_socket(path) -> list[dict]:
    """GET /sessions on the Unix socket, with no Authorization header."""
    connection = http.client.HTTPConnection("localhost", timeout=10)
    connection.sock = socket.socket(socket.AF_UNIX)
    connection.sock.connect(str(path))
    try:
        connection.request("GET", "/sessions")
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def test_unix_socket_without_token_and_bytes_in_who(proxy_factory, dovecot, tmp_path):
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX)   # a socket file left by a process that died
    stale.bind(str(path))
    stale.close()
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["admin"] = {"socket": str(path), "socket_mode": "0660"}
    proxy = proxy_factory(config)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    user, password = dovecot.add_user()
    client, sent, received = raw_imap_login(proxy.port("imap"), user, password)

    who = verb(proxy, "who")
    assert who.returncode == 0, who.stderr
    header, row = who.stdout.splitlines()
    assert header.split()[-2:] == ["bytes_in", "bytes_out"]
    assert row.split()[2] == user
    assert row.split()[-2:] == [str(sent), str(received)]

    client.sendall(b"b NOOP\r\n")
    reply = read_until_tagged(client, b"b")
    # the relay forwards a reply before it counts it: wait until the NOOP's are counted
    expected = (user, sent + len(b"b NOOP\r\n"), received + len(reply))
    wait_for(lambda: [(s["user"], s["bytes_in"], s["bytes_out"])
                      for s in sessions_over_socket(path)] == [expected],
             f"who's byte counts to reach {expected}")
    client.close()
    assert proxy.stop() == 0
    assert not path.exists()
