"""OAuth2 brokering end to end: clients log in to mailproxy with a local password (Argon2 file),
mailproxy logs in to a real Dovecot with XOAUTH2 / OAUTHBEARER and an access token it obtained
from the refresh token stored (sealed) in its token file, at the test provider's token endpoint
(tests/support/oauth2service.py), whose introspection endpoint Dovecot's `oauth2` passdb asks.
Covers the relay (IMAP, POP3), the token cache, refresh on expiry, a cached token the upstream
refuses (refreshed and retried), a revoked refresh token (NO [AUTHENTICATIONFAILED] / -ERR
[AUTH]), the token endpoint down (NO [UNAVAILABLE] / -ERR [SYS/TEMP]), a user not enrolled,
and that no token, secret or password reaches the log."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
import yaml
from argon2 import PasswordHasher

from proxy.oauth2.passwords import hash_password, parse
from proxy.oauth2.token_file import TokenFile
from proxy.store.crypto import KeyRing
from support.dovecot import start_dovecot
from support.oauth2service import OAuth2Service

USER, BOB = "ann@oauth.example", "bob@oauth.example"
LOCAL_PW, SECRET = "local-Pa55-ann", "client-s3cret-7c1d"


@pytest.fixture(scope="module")
def provider_and_dovecot(dovecot_root):
    service = OAuth2Service(client_secret=SECRET)
    dovecot = start_dovecot(dovecot_root, extra_config=service.dovecot_config(dovecot_root))
    for user in (USER, BOB):
        dovecot.add_user(user, "unused-password")
        dovecot.deliver(user, b"Subject: hello\r\n\r\nx\r\n")
    yield service, dovecot
    dovecot.stop()
    service.stop()


@pytest.fixture
def provider(provider_and_dovecot):
    """The provider, fresh for each test: ann's refresh token `rt-ann`, nothing asked yet."""
    service, _ = provider_and_dovecot
    with service.lock:
        service.tokens, service.refresh_tokens = {}, {"rt-ann": USER}
        service.grants, service.forms, service.asked = [], [], []
        service.expires_in, service.rotate, service.down = 3600, False, False
        service.issue_unusable = False
    return service


def broker_config(tmp_path, service: OAuth2Service, dovecot, mechanism: str = "xoauth2") -> dict:
    (tmp_path / "oauth2.key").write_text(KeyRing.generate_line("k1") + "\n")
    (tmp_path / "client-secret").write_text(SECRET + "\n")
    (tmp_path / "users").write_text(f"{USER}:{hash_password(LOCAL_PW)}\n"
                                    f"{BOB}:{hash_password('bob-local')}\n")
    TokenFile(tmp_path / "tokens.json", tmp_path / "oauth2.key").write_token(USER, "rt-ann")
    listener = {"address": "127.0.0.1:0", "allow_plaintext_auth": True}
    return {
        "listeners": [{"name": "imap", "protocol": "imap", **listener},
                      {"name": "pop3", "protocol": "pop3", **listener}],
        "upstreams": {"m365": {
            "host": dovecot.host, "imap": {"port": dovecot.imap_port},
            "pop3": {"port": dovecot.pop3_port},
            "auth": {"oauth2": {
                "token_url": f"{service.url}/token", "client_id": "mailproxy",
                "client_secret": {"file": str(tmp_path / "client-secret")},
                "scope": ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"],
                "mechanism": mechanism, "password_file": str(tmp_path / "users"),
                "token_file": str(tmp_path / "tokens.json"),
                "key_file": str(tmp_path / "oauth2.key"), "timeout": "5s"}}}},
        "routes": [{"match": "*", "upstream": "m365"}],
        "auth_throttle": {"enabled": False},
        "metrics": {"address": "127.0.0.1:0"},
    }


def refreshes(proxy) -> dict[str, float]:
    """mailproxy_oauth_token_refreshes_total by result, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics",
                                  timeout=15).read().decode()
    found = re.findall(r'^mailproxy_oauth_token_refreshes_total\{result="(\w+)"\} (\S+)$',
                       text, re.MULTILINE)
    return {result: float(value) for result, value in found}


@pytest.fixture
def proxy(provider, provider_and_dovecot, proxy_factory, tmp_path):
    _, dovecot = provider_and_dovecot
    return proxy_factory(broker_config(tmp_path, provider, dovecot))


def imap_login(proxy, user: str = USER, password: str = LOCAL_PW) -> tuple[str, list]:
    with imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=15) as imap:
        try:
            typ, data = imap.login(user, password)
        except imaplib.IMAP4.error as exc:   # imaplib raises with the reply's text (bytes)
            return "NO", [exc.args[0]]
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"])
        imap.logout()
        return typ, data


def raw_imap_login(proxy, user: str, password: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port("imap")), timeout=15) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        return reader.readline()


def pop3_login(proxy, user: str = USER, password: str = LOCAL_PW) -> bytes:
    pop = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=15)
    try:
        pop.user(user)
        try:
            reply = pop.pass_(password)
        except poplib.error_proto as exc:
            return exc.args[0]
        assert pop.stat()[0] == 1
        return reply
    finally:
        pop.close()


def assert_no_secrets(proxy, provider: OAuth2Service) -> None:
    logs = proxy.logs()
    for secret in [LOCAL_PW, SECRET, "rt-ann", *provider.tokens]:
        assert secret not in logs


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_relay_logs_in_with_a_brokered_token(provider, provider_and_dovecot, proxy_factory,
                                             tmp_path, mechanism) -> None:
    _, dovecot = provider_and_dovecot
    proxy = proxy_factory(broker_config(tmp_path, provider, dovecot, mechanism))
    assert imap_login(proxy)[0] == "OK"
    assert pop3_login(proxy).startswith(b"+OK")
    assert imap_login(proxy)[0] == "OK"
    assert provider.grants == ["refresh_token"]          # one token, cached for the others
    assert provider.forms[0]["client_secret"] == SECRET
    assert provider.forms[0]["refresh_token"] == "rt-ann"
    assert provider.forms[0]["scope"] == \
        "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert len(provider.asked) == 3 and set(provider.asked) <= set(provider.tokens)
    assert f"mechanism={mechanism.upper()}" in proxy.logs()
    assert_no_secrets(proxy, provider)


def test_wrong_local_password_asks_no_provider(provider, proxy) -> None:
    assert raw_imap_login(proxy, USER, "wrong") == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert pop3_login(proxy, USER, "wrong") == b"-ERR [AUTH] Authentication failed."
    assert provider.grants == [] and provider.asked == []
    assert "reason=local_password" in proxy.logs()


def test_refresh_when_the_token_expires(provider, proxy) -> None:
    provider.expires_in = 30            # less than refresh_margin (60 s): expired at once
    assert imap_login(proxy)[0] == "OK"
    assert imap_login(proxy)[0] == "OK"
    assert provider.grants == ["refresh_token"] * 2
    assert provider.asked[0] != provider.asked[1]         # Dovecot saw two different tokens


def test_refused_cached_token_is_refreshed_once(provider, proxy) -> None:
    assert imap_login(proxy)[0] == "OK"
    provider.revoke_access()            # Dovecot now refuses the cached token
    assert imap_login(proxy)[0] == "OK"
    assert pop3_login(proxy).startswith(b"+OK")
    assert provider.grants == ["refresh_token"] * 2
    assert_no_secrets(proxy, provider)


def test_rotated_refresh_token_is_kept(provider, proxy, tmp_path) -> None:
    provider.rotate, provider.expires_in = True, 30
    for _ in range(3):
        assert imap_login(proxy)[0] == "OK"
    assert [f["refresh_token"] for f in provider.forms][:1] == ["rt-ann"]
    assert len({f["refresh_token"] for f in provider.forms}) == 3   # each the last one issued
    assert "rt-" not in (tmp_path / "tokens.json").read_text()


def test_revoked_refresh_token(provider, proxy) -> None:
    provider.refresh_tokens.clear()
    assert raw_imap_login(proxy, USER, LOCAL_PW) == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert pop3_login(proxy) == b"-ERR [AUTH] Authentication failed."
    logs = proxy.logs()
    assert "reason=oauth2_refresh_refused error=invalid_grant" in logs
    assert_no_secrets(proxy, provider)
    assert refreshes(proxy) == {"ok": 0, "refused": 2, "unavailable": 0}


def test_token_endpoint_down(provider, proxy) -> None:
    provider.down = True
    assert raw_imap_login(proxy, USER, LOCAL_PW) == \
        b"a NO [UNAVAILABLE] Server unavailable, try again later.\r\n"
    assert pop3_login(proxy) == b"-ERR [SYS/TEMP] Server unavailable, try again later."
    assert "reason=oauth2_unavailable detail=" in proxy.logs()
    provider.down = False
    assert imap_login(proxy)[0] == "OK"
    assert refreshes(proxy) == {"ok": 1, "refused": 0, "unavailable": 2}


def test_user_not_enrolled(provider, proxy) -> None:
    assert raw_imap_login(proxy, BOB, "bob-local") == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert "reason=oauth2_not_enrolled" in proxy.logs()
    assert provider.grants == []


def test_gateway_fetches_with_a_brokered_token(provider, provider_and_dovecot, proxy_factory,
                                               tmp_path) -> None:
    """The gateway: IMAP LOGIN with the local password, the POP3 fetcher logs in to Dovecot
    with AUTH XOAUTH2 and the brokered token, and the mail is in the gateway's store."""
    _, dovecot = provider_and_dovecot
    config = broker_config(tmp_path, provider, dovecot)
    config["listeners"] = [{"name": "imap", "protocol": "imap", "mode": "gateway",
                            "address": "127.0.0.1:0", "allow_plaintext_auth": True}]
    config["gateway"] = {"store": str(tmp_path / "gateway.db"), "poll_interval": "1h"}
    gateway = proxy_factory(config)
    assert imap_login(gateway, password="wrong")[0] == "NO"
    with imaplib.IMAP4("127.0.0.1", gateway.port("imap"), timeout=15) as imap:
        assert imap.login(USER, LOCAL_PW)[0] == "OK"
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and data[0][1] == b"Subject: hello\r\n\r\n"
        imap.logout()
    assert provider.grants == ["refresh_token"]     # login check and fetch share the token
    assert len(provider.asked) == 2                 # Dovecot asked twice: login check, fetch
    assert_no_secrets(gateway, provider)
    # bob enrolled while the gateway runs, with a refresh token the provider has revoked
    TokenFile(tmp_path / "tokens.json", tmp_path / "oauth2.key").write_token(BOB, "rt-bob")
    assert imap_login(gateway, BOB, "bob-local") == \
        ("NO", [b"[AUTHENTICATIONFAILED] Authentication failed."])
    assert "reason=oauth2_refresh_refused error=invalid_grant" in gateway.logs()


def enrol(config: dict, tmp_path, flow: str, user: str) -> subprocess.Popen:
    path = tmp_path / "enrol.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "proxy", "oauth2", "enrol", "--config",
                             str(path), "--upstream", "m365", "--flow", flow, user],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen, marker: str) -> list[str]:
    lines: list[str] = []
    while not lines or marker not in lines[-1]:
        line = proc.stdout.readline()
        assert line, f"enrol ended early: {lines} {proc.stderr.read()}"
        lines.append(line)
    return lines


def device_and_code_config(tmp_path, provider, dovecot) -> dict:
    config = broker_config(tmp_path, provider, dovecot)
    config["upstreams"]["m365"]["auth"]["oauth2"].update(
        device_authorization_url=f"{provider.url}/device",
        authorization_url=f"{provider.url}/authorize?prompt=consent",
        redirect_uri="http://localhost:8765/cb")
    return config


def test_enrol_device_flow_then_log_in(provider, provider_and_dovecot, proxy_factory,
                                       tmp_path) -> None:
    _, dovecot = provider_and_dovecot
    config = device_and_code_config(tmp_path, provider, dovecot)
    proxy = proxy_factory(config)
    assert raw_imap_login(proxy, BOB, "bob-local") == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    proc = enrol(config, tmp_path, "device", BOB)
    lines = read_until(proc, "Waiting for the sign-in")
    assert lines[1].strip() == f"{provider.url}/activate"
    provider.approve(lines[3].strip(), BOB)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, "")
    assert out == f"{BOB}: refresh token stored in {tmp_path / 'tokens.json'} (upstream m365)\n"
    assert provider.forms[-1]["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
    assert imap_login(proxy, BOB, "bob-local")[0] == "OK"       # no reload needed
    assert "rt-" not in (tmp_path / "tokens.json").read_text()


def test_enrol_pasted_code(provider, provider_and_dovecot, tmp_path) -> None:
    _, dovecot = provider_and_dovecot
    config = device_and_code_config(tmp_path, provider, dovecot)
    proc = enrol(config, tmp_path, "code", BOB)
    address = read_until(proc, "?")[-1].strip()
    read_until(proc, "paste the code")
    parts = urllib.parse.urlsplit(address)
    query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
    assert address.startswith(f"{provider.url}/authorize?prompt=consent&response_type=code&")
    assert query["client_id"] == "mailproxy" and query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == "http://localhost:8765/cb"
    assert query["scope"] == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    provider.codes["code-77"] = BOB
    provider.challenges["code-77"] = query["code_challenge"]
    out, err = proc.communicate(f"http://localhost:8765/cb?code=code-77&state={query['state']}\n",
                                timeout=60)
    assert (proc.returncode, err) == (0, ""), err
    assert TokenFile(tmp_path / "tokens.json", tmp_path / "oauth2.key").users() == [USER, BOB]
    assert provider.forms[-1]["code_verifier"] and provider.forms[-1]["code"] == "code-77"


def test_enrol_refusals(provider, provider_and_dovecot, tmp_path) -> None:
    _, dovecot = provider_and_dovecot
    config = device_and_code_config(tmp_path, provider, dovecot)
    proc = enrol(config, tmp_path, "code", BOB)
    read_until(proc, "paste the code")
    out, err = proc.communicate("http://localhost:8765/cb?code=c&state=forged\n", timeout=60)
    assert (proc.returncode, err) == (1, "oauth2 enrol: the address is not the answer to this "
                                         "sign-in (state differs)\n")
    provider.down = True
    proc = enrol(config, tmp_path, "device", BOB)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (1, "oauth2 enrol: device authorization endpoint: HTTP 503\n")
    del config["upstreams"]["m365"]["auth"]["oauth2"]["device_authorization_url"]
    proc = enrol(config, tmp_path, "device", BOB)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (2, "oauth2 enrol: --flow device needs "
                                         "upstreams.m365.auth.oauth2.device_authorization_url\n")
    assert TokenFile(tmp_path / "tokens.json", tmp_path / "oauth2.key").users() == [USER]


def test_hash_password_line_is_accepted(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "proxy", "oauth2", "hash-password", BOB],
                            input="s3cret pass\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"{BOB}:$argon2id$v=19$")
    users = parse(result.stdout, "f")
    assert PasswordHasher().verify(users[BOB], "s3cret pass")


def test_gateway_sync_command(provider, provider_and_dovecot, tmp_path) -> None:
    _, dovecot = provider_and_dovecot
    config = broker_config(tmp_path, provider, dovecot)
    config["gateway"] = {"store": str(tmp_path / "gateway.db")}
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(config))

    def sync(user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy", "gateway", "sync", "--config",
                               str(path), user], capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items()
                                   if k != "MAILPROXY_PASSWORD"})

    result = sync(USER)
    assert (result.returncode, result.stdout.split(" in ")[0]) == \
        (0, "fetched 1 messages, 21 bytes, deleted 0 upstream")
    assert provider.grants == ["refresh_token"]
    result = sync(BOB)
    assert (result.returncode, result.stderr) == \
        (1, f"sync failed: {BOB} has no refresh token (mailproxy oauth2 enrol)\n")


def test_upstream_refuses_a_fresh_token(provider, proxy) -> None:
    """Dovecot refuses the token just issued: the client, which sent a password, gets a plain
    NO / -ERR (never the upstream's SASL `+` challenge), after one refresh per login."""
    provider.issue_unusable = True
    provider.expires_in = 30            # not cached: each login refreshes once
    assert raw_imap_login(proxy, USER, LOCAL_PW) == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert pop3_login(proxy) == b"-ERR [AUTH] Authentication failed."
    assert provider.grants == ["refresh_token"] * 2
    assert "result=failure mechanism=XOAUTH2 mode=relay" in proxy.logs()
    assert_no_secrets(proxy, provider)
