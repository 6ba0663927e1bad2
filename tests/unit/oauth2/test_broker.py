"""The OAuth2 broker against the test provider over real HTTP (tests/support/oauth2service.py):
refresh, caching until `refresh_margin` before expiry (a manual clock), rotation stored back,
a revoked refresh token, the endpoint down or refusing the client, the local password file and
the token file sealed under the key file."""

from __future__ import annotations

import json
import pathlib

import pytest

from proxy.config import OAuth2, Secret
from proxy.oauth2 import Broker, BrokerUnavailable, NotEnrolled, RefreshRefused, sasl_message
from proxy.oauth2.passwords import PasswordFile, PasswordFileError, hash_password, parse
from proxy.oauth2.token_file import TokenFile, TokenFileError
from proxy.store.crypto import KeyRing
from support.oauth2service import OAuth2Service

USER = "ann@oauth.example"


@pytest.fixture
def provider():
    service = OAuth2Service(refresh_tokens={"rt-ann": USER}, client_secret="s3cret")
    yield service
    service.stop()


def settings(tmp: pathlib.Path, url: str, **extra) -> OAuth2:
    key = tmp / "oauth2.key"
    if not key.exists():
        key.write_text(KeyRing.generate_line("k1") + "\n")
        (tmp / "users").write_text(f"{USER}:{hash_password('local-pw')}\n")
    return OAuth2(token_url=f"{url}/token", client_id="mailproxy", password_file=tmp / "users",
                  token_file=tmp / "tokens.json", key_file=key,
                  client_secret=Secret(b"s3cret", "test"), **extra)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker(tmp_path, provider):
    config = settings(tmp_path, provider.url)
    TokenFile(config.token_file, config.key_file).write_token(USER, "rt-ann")
    return Broker(config, clock=Clock())


async def test_refresh_then_cache_until_margin(broker, provider) -> None:
    first = await broker.access_token(USER)
    assert first.startswith("at-") and provider.tokens[first] == USER
    assert await broker.access_token(USER) == first
    assert provider.grants == ["refresh_token"]
    assert provider.forms[0] == {"grant_type": "refresh_token", "refresh_token": "rt-ann",
                                 "client_id": "mailproxy", "client_secret": "s3cret"}
    broker.clock.now += 3600 - 60 - 1          # still 61 s left: more than refresh_margin
    assert await broker.access_token(USER) == first
    broker.clock.now += 1                      # 60 s left: refreshed
    second = await broker.access_token(USER)
    assert second != first and provider.grants == ["refresh_token"] * 2


async def test_forget_refreshes(broker, provider) -> None:
    first = await broker.access_token(USER)
    broker.forget(USER, "some-other-token")
    assert await broker.access_token(USER) == first
    broker.forget(USER, first)
    assert await broker.access_token(USER) != first


async def test_rotated_refresh_token_is_stored_sealed(broker, provider) -> None:
    provider.rotate = True
    await broker.access_token(USER)
    stored = broker.tokens.read_token(USER)
    assert stored is not None and stored.startswith("rt-") and stored != "rt-ann"
    text = broker.settings.token_file.read_text()
    assert stored not in text and "rt-ann" not in text
    assert oct(broker.settings.token_file.stat().st_mode & 0o777) == "0o600"
    broker.clock.now += 4000
    await broker.access_token(USER)            # the old one was revoked by the provider
    assert provider.grants == ["refresh_token"] * 2


async def test_revoked_refresh_token(broker, provider) -> None:
    provider.refresh_tokens.clear()
    with pytest.raises(RefreshRefused) as caught:
        await broker.access_token(USER)
    assert caught.value.error == "invalid_grant"
    assert "rt-ann" not in repr(caught.value)


async def test_not_enrolled(broker) -> None:
    with pytest.raises(NotEnrolled):
        await broker.access_token("bob@oauth.example")


async def test_endpoint_down_and_client_refused(broker, provider) -> None:
    provider.down = True
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.access_token(USER)
    assert caught.value.detail == "token endpoint: HTTP 503"
    provider.down, provider.client_secret = False, "rotated-secret"
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.access_token(USER)
    assert caught.value.detail == "token endpoint refused the client: invalid_client"
    assert "s3cret" not in caught.value.detail


async def test_endpoint_unreachable(tmp_path, provider) -> None:
    provider.stop()
    config = settings(tmp_path, provider.url, timeout=5.0)
    TokenFile(config.token_file, config.key_file).write_token(USER, "rt-ann")
    with pytest.raises(BrokerUnavailable) as caught:
        await Broker(config).access_token(USER)
    assert caught.value.detail == "token endpoint: request failed (ConnectError)"


async def test_local_password(broker, tmp_path) -> None:
    assert await broker.check_password(USER, b"local-pw")
    assert not await broker.check_password(USER, b"wrong")
    assert not await broker.check_password("nobody@oauth.example", b"local-pw")
    (tmp_path / "users").write_text(f"{USER}:{{ARGON2ID}}{hash_password('new-pw')}\n"
                                    f"bob@oauth.example:{hash_password('bob-pw')}\n")
    assert await broker.check_password("bob@oauth.example", b"bob-pw")   # re-read, no reload
    assert await broker.check_password(USER, b"new-pw")
    (tmp_path / "users").write_text("bob:plain-text-password\n")
    with pytest.raises(BrokerUnavailable):
        await broker.check_password("bob", b"plain-text-password")


def test_password_file_lines() -> None:
    assert parse("# comment\n\nann:$argon2id$v=19$x\n", "f") == {"ann": "$argon2id$v=19$x"}
    with pytest.raises(PasswordFileError, match=r"^f line 1: expected user:\$argon2id\$"):
        parse("ann:{SHA512-CRYPT}$6$salt$hash\n", "f")
    with pytest.raises(PasswordFileError, match="^f line 2: user 'ann' appears twice$"):
        parse("ann:$argon2id$a\nann:$argon2id$b\n", "f")


def test_token_file_binds_records_to_users(tmp_path) -> None:
    key = tmp_path / "k"
    key.write_text(KeyRing.generate_line("k1") + "\n")
    tokens = TokenFile(tmp_path / "t.json", key)
    tokens.write_token("ann", "rt-secret-ann")
    tokens.write_token("bob", "rt-secret-bob")
    data = json.loads((tmp_path / "t.json").read_text())
    data["refresh_tokens"]["bob"] = data["refresh_tokens"]["ann"]   # swap a record
    (tmp_path / "t.json").write_text(json.dumps(data))
    assert tokens.read_token("ann") == "rt-secret-ann"
    with pytest.raises(TokenFileError, match="decryption failed"):
        tokens.read_token("bob")
    tokens.write_token("ann", None)
    assert tokens.users() == ["bob"]
    (tmp_path / "t.json").write_text("[]")
    with pytest.raises(TokenFileError, match="not a mailproxy token file"):
        tokens.read_token("ann")


def test_sasl_messages() -> None:
    assert sasl_message("XOAUTH2", "a@b", "tok") == b"user=a@b\x01auth=Bearer tok\x01\x01"
    assert sasl_message("OAUTHBEARER", "a=,b", "tok") == \
        b"n,a=a=3D=2Cb,\x01auth=Bearer tok\x01\x01"


def test_config_checks() -> None:
    from proxy import config as config_mod

    text = """
listeners: [{name: imap, protocol: imap, address: "127.0.0.1:1143"}]
upstreams:
  m365:
    host: 127.0.0.1
    imap: {port: 143}
    auth:
      oauth2: {token_url: "ftp://x/token", client_id: c, password_file: u, token_file: t,
               key_file: k, timeout: 0s, refresh_margin: 1m, mechanism: plain,
               client_secret: "inline"}
routes: [{match: "*", upstream: m365}]
"""
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(text)
    assert caught.value.errors == [
        "line 10: upstreams.m365.auth.oauth2.client_secret: a secret is {file: PATH} or "
        "{env: NAME}, never inline",
        "line 9: upstreams.m365.auth.oauth2.mechanism: expected one of xoauth2, oauthbearer; "
        "got 'plain'"]
    fixed = text.replace("mechanism: plain", "mechanism: oauthbearer").replace(
        'client_secret: "inline"', "scope: [a, b]")
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(fixed)
    assert caught.value.errors == [
        "line 8: upstreams.m365.auth.oauth2.token_url: expected an https:// URL",
        "line 9: upstreams.m365.auth.oauth2.timeout: must be more than 0"]


async def test_password_successes_are_remembered(tmp_path) -> None:
    path = tmp_path / "users"
    path.write_text(f"ann:{hash_password('pw-1')}\n")
    clock = Clock()

    class Counting(PasswordFile):
        argon2_runs = 0

        def _verify(self, user: str, password: bytes) -> bool:
            self.argon2_runs += 1
            return super()._verify(user, password)

    passwords = Counting(path, cache_ttl=300, clock=clock)
    assert await passwords.verify("ann", b"pw-1")
    assert await passwords.verify("ann", b"pw-1")
    assert passwords.argon2_runs == 1                   # the second was remembered
    assert not await passwords.verify("ann", b"pw-2")   # a wrong one is always checked
    assert passwords.argon2_runs == 2
    clock.now += 301
    assert await passwords.verify("ann", b"pw-1")       # expired: checked again
    assert passwords.argon2_runs == 3
    path.write_text(f"ann:{hash_password('pw-2')}\n")   # a changed file forgets successes
    assert not await passwords.verify("ann", b"pw-1")
    assert await passwords.verify("ann", b"pw-2")
    assert passwords.argon2_runs == 5
    off = Counting(path, cache_ttl=0, clock=clock)
    assert await off.verify("ann", b"pw-2") and await off.verify("ann", b"pw-2")
    assert off.argon2_runs == 2


def test_example_config_is_valid(tmp_path) -> None:
    """config/examples/oauth2-broker.yaml validates (its client secret file is made here)."""
    from proxy import config as config_mod

    example = pathlib.Path(__file__).resolve().parents[3] / "config/examples/oauth2-broker.yaml"
    secret = tmp_path / "secret"
    secret.write_text("x\n")
    text = example.read_text().replace("/etc/mailproxy/m365-client-secret", str(secret))
    oauth2 = config_mod.loads(text).upstreams["m365"].auth.oauth2
    assert (oauth2.mechanism, oauth2.client_secret.value, len(oauth2.scope)) == ("xoauth2", b"x", 3)
