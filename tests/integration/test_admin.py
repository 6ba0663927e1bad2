"""The admin endpoint and its verbs against a real proxy in front of Dovecot: `who` lists a live
IMAP and a live POP3 session, `kick USER` ends the IMAP one (with BYE) and not the POP3 one,
`kick IP` ends the rest, `reload` reloads, and a wrong token is refused."""

from __future__ import annotations

import imaplib
import poplib
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from support.dovecot import free_ports
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
                              "since", "commands"]
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
    assert result.stderr == (f"{config}: no admin: section; add admin: {{address: "
                             f"127.0.0.1:9101, token: {{file: PATH}}}} and restart mailproxy\n")
