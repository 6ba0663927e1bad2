"""OAuth2 refresh across processes (`workers: N`, or `gateway sync` beside a running proxy): two
real processes refresh the same user's access token at the same moment against the test
provider, which rotates refresh tokens and refuses a spent one (`invalid_grant`), as providers
with reuse detection do.

The provider holds the first token request unanswered (tests/support/oauth2service.py `hold`)
until the second process has either sent its own request (the race: both spend the stored
refresh token, one is refused) or is seen waiting on the user's refresh lock in /proc/locks.
Then both are answered; both processes must get a token, and each request must have spent a
different refresh token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from proxy.oauth2.token_file import TokenFile
from proxy.store.crypto import KeyRing
from support.oauth2service import OAuth2Service
from support.polling import wait_for

USER = "ann@oauth.example"
SECRET = "s3cret"

REFRESH = """
import json, pathlib, sys, trio
from proxy.config import OAuth2, Secret
from proxy.oauth2 import Broker, RefreshRefused
args = json.loads(sys.argv[1])
path = {k: pathlib.Path(args[k]) for k in ("users", "tokens", "key")}
settings = OAuth2(token_url=args["url"], client_id="mailproxy", password_file=path["users"],
                  token_file=path["tokens"], key_file=path["key"],
                  client_secret=Secret(args["secret"].encode(), "test"), timeout=60.0)
try:
    print(trio.run(Broker(settings).access_token, args["user"]))
except RefreshRefused as exc:
    print("refused", exc.error)
"""


@pytest.fixture
def provider():
    service = OAuth2Service(refresh_tokens={"rt-ann": USER}, client_secret=SECRET)
    service.rotate = True
    yield service
    service.release()
    service.stop()


def waiting_on(path, pid: int) -> bool:
    """Whether /proc/locks shows `pid` blocked on a lock of the file at `path`."""
    if not path.exists():
        return False
    inode = f":{path.stat().st_ino} "
    with open("/proc/locks") as locks:
        return any("->" in line and f" {pid} " in line and inode in line for line in locks)


def test_two_processes_refresh_one_user_without_spending_a_token_twice(tmp_path, provider):
    key, tokens = tmp_path / "oauth2.key", tmp_path / "tokens.json"
    key.write_text(KeyRing.generate_line("k1") + "\n")
    (tmp_path / "users").write_text("")
    token_file = TokenFile(tokens, key)
    token_file.write_token(USER, "rt-ann")
    args = json.dumps({"url": f"{provider.url}/token", "users": str(tmp_path / "users"),
                       "tokens": str(tokens), "key": str(key), "secret": SECRET, "user": USER})
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", REFRESH, args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    provider.hold()
    first = start()
    try:
        wait_for(lambda: provider.arrived or first.poll() is not None,
                 "the first process's token request", timeout=60)
        assert first.poll() is None, first.communicate()
        second = start()
        try:
            lock = token_file.lock_path(USER)
            wait_for(lambda: len(provider.arrived) == 2 or waiting_on(lock, second.pid)
                     or second.poll() is not None,
                     "a second token request or the second process waiting on the refresh lock",
                     timeout=60)
            provider.release()
            outputs = [p.communicate(timeout=60) for p in (first, second)]
        finally:
            second.kill()
    finally:
        first.kill()
    tokens_out = [out.strip() for out, _ in outputs]
    assert [p.returncode for p in (first, second)] == [0, 0], [err for _, err in outputs]
    assert all(t.startswith("at-") and provider.tokens[t] == USER for t in tokens_out), tokens_out
    assert tokens_out[0] != tokens_out[1]
    spent = [form["refresh_token"] for form in provider.forms]
    assert spent == ["rt-ann", f"rt-1-{USER}"]
    assert token_file.read_token(USER) == f"rt-2-{USER}"
    assert provider.refresh_tokens == {f"rt-2-{USER}": USER}
