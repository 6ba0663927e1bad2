"""`mailproxy gateway accounts` and `gateway delete-account` against a running gateway in front of
Dovecot: accounts synced by real IMAP logins are listed with their exact message count and size;
a delete without --yes deletes nothing; with --yes the account is gone from the store, the
user's open session is ended through the admin socket, the other account is untouched, and the
next login starts a new account filled from the upstream again. Each account shows its last
successful sync; a `gateway sync` the upstream refuses shows its error there, and a later
successful one clears it."""

from __future__ import annotations

import datetime as dt
import imaplib
import json
import os
import subprocess
import sys
import time

import pytest

from support.proxyproc import relay_config

REFUSED = "auth_rejected: PASS refused: Authentication failed."


def message(n: int, size: int) -> bytes:
    head = f"From: a@example.org\r\nTo: b@example.org\r\nSubject: m{n}\r\n\r\n".encode()
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


def gateway_verb(proxy, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "gateway", *args, "--config",
                           str(proxy.config_path)], capture_output=True, text=True, timeout=60,
                          env=env)


def login(proxy, user: str, password: str) -> tuple[imaplib.IMAP4, int]:
    """An IMAP session through the gateway (its login waits for the first sync); INBOX size."""
    imap = imaplib.IMAP4("127.0.0.1", proxy.port("imap"))
    imap.login(user, password)
    typ, data = imap.select("INBOX")
    assert typ == "OK"
    return imap, int(data[0])


@pytest.fixture
def gateway(proxy_factory, dovecot, tmp_path):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["listeners"][0]["mode"] = "gateway"
    config["gateway"] = {"store": str(tmp_path / "gateway.db")}
    config["admin"] = {"socket": str(tmp_path / "admin.sock")}
    return proxy_factory(config)


def test_accounts_then_delete_account(gateway, dovecot):
    alice, alice_pw = dovecot.add_user()
    bob, bob_pw = dovecot.add_user()
    for n, size in enumerate((1000, 2500)):
        dovecot.deliver(alice, message(n, size))
    dovecot.deliver(bob, message(9, 700))
    before = time.time()
    alice_imap, exists = login(gateway, alice, alice_pw)
    assert exists == 2
    bob_imap, exists = login(gateway, bob, bob_pw)
    assert exists == 1
    bob_imap.logout()
    after = time.time()

    listed = gateway_verb(gateway, "accounts")
    assert listed.returncode == 0, listed.stderr
    header, *rows = [line.split() for line in listed.stdout.splitlines()]
    assert header == ["user", "upstream", "messages", "bytes", "last_fetch", "last_sync",
                      "last_error"]
    assert [row[:4] + row[6:] for row in rows] == sorted([[alice, "main", "2", "3500", "-"],
                                                          [bob, "main", "1", "700", "-"]])
    for row in rows:
        for cell in row[4:6]:
            when = dt.datetime.strptime(cell, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
            assert int(before) <= when.timestamp() <= after

    as_json = json.loads(gateway_verb(gateway, "accounts", "--json").stdout)
    times = ("last_fetch", "last_sync")
    assert [{k: v for k, v in a.items() if k not in times} for a in as_json] == sorted(
        [{"user": alice, "upstream": "main", "messages": 2, "bytes": 3500, "last_error": None,
          "last_error_at": None},
         {"user": bob, "upstream": "main", "messages": 1, "bytes": 700, "last_error": None,
          "last_error_at": None}], key=lambda a: a["user"])
    assert all(before <= a[k] <= after for a in as_json for k in times)

    # a sync the upstream refuses (bob's upstream password is not this one) keeps its error
    refused_at = time.time()
    refused = gateway_verb(gateway, "sync", bob, env={**os.environ, "MAILPROXY_PASSWORD": "wrong"})
    assert refused.returncode == 1
    bob_row = [a for a in json.loads(gateway_verb(gateway, "accounts", "--json").stdout)
               if a["user"] == bob][0]
    assert bob_row["last_error"] == REFUSED
    assert refused_at <= bob_row["last_error_at"] <= time.time()
    assert bob_row["last_sync"] <= refused_at
    table = gateway_verb(gateway, "accounts").stdout.splitlines()
    assert [line.split(None, 6)[6] for line in table if line.startswith(bob)] == [
        f"{dt.datetime.fromtimestamp(bob_row['last_error_at'], dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
        f" {REFUSED}"]
    # a successful one clears it
    synced = gateway_verb(gateway, "sync", bob, env={**os.environ, "MAILPROXY_PASSWORD": bob_pw})
    assert synced.returncode == 0, synced.stderr
    bob_row = [a for a in json.loads(gateway_verb(gateway, "accounts", "--json").stdout)
               if a["user"] == bob][0]
    assert (bob_row["last_error"], bob_row["last_error_at"]) == (None, None)
    assert bob_row["last_sync"] >= refused_at

    dry = gateway_verb(gateway, "delete-account", alice.upper())   # names are canonicalised
    assert (dry.returncode, dry.stdout, dry.stderr) == (
        2, f"would delete account {alice} on upstream main: 2 messages, 3500 bytes\n",
        "nothing deleted: run again with --yes to delete\n")
    assert len(json.loads(gateway_verb(gateway, "accounts", "--json").stdout)) == 2

    deleted = gateway_verb(gateway, "delete-account", "--yes", alice)
    assert (deleted.returncode, deleted.stdout, deleted.stderr) == (
        0, f"deleted account {alice} on upstream main: 2 messages, 3500 bytes\n"
           f"kicked 1 session(s) of user {alice}\n", "")
    assert alice_imap.readline() == b"* BYE Disconnected by the administrator.\r\n"
    assert [a["user"] for a in json.loads(gateway_verb(gateway, "accounts", "--json").stdout)] \
        == [bob]

    missing = gateway_verb(gateway, "delete-account", "--yes", alice)
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        1, "", f"no gateway account for user {alice}\n")

    # the upstream still has alice's mail (retention: keep): her next login fetches it again
    alice_imap, exists = login(gateway, alice, alice_pw)
    assert exists == 2
    alice_imap.logout()
