"""`gateway sync` command line: password sources, output, exit status."""

from __future__ import annotations

import argparse
import logging

import pytest
import yaml

from proxy.gateway import sync_cli

from .helpers import config_dict


@pytest.fixture(autouse=True)
def restore_logging():
    """sync_cli.main() configures the "mailproxy" logger; leave it as other tests expect it."""
    logger = logging.getLogger("mailproxy")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate, logger.level = saved


def write_config(tmp_path, dovecot) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(dovecot.pop3_port, str(tmp_path / "s.db"))))
    return str(path)


def test_sync_with_password_file_and_env(dovecot, user, tmp_path, capsys, monkeypatch):
    name, password = user
    dovecot.deliver(name, b"Subject: hi\r\n\r\nhello\r\n")
    config = write_config(tmp_path, dovecot)
    secret = tmp_path / "pw"
    secret.write_text(password + "\n")
    assert sync_cli.main(["--config", config, "--password-file", str(secret), name]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fetched 1 messages, ") and "deleted 0 upstream in" in out
    monkeypatch.setenv(sync_cli.PASSWORD_ENV, password)
    assert sync_cli.main(["--config", config, name]) == 0
    assert capsys.readouterr().out.startswith("fetched 0 messages, 0 bytes")


def test_missing_or_wrong_password(dovecot, user, tmp_path, capsys, monkeypatch):
    name, _ = user
    config = write_config(tmp_path, dovecot)
    monkeypatch.delenv(sync_cli.PASSWORD_ENV, raising=False)
    assert sync_cli.main(["--config", config, name]) == 2
    assert "MAILPROXY_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv(sync_cli.PASSWORD_ENV, "wrong")
    assert sync_cli.main(["--config", config, name]) == 1
    err = capsys.readouterr().err
    assert "sync failed: auth" in err
    # the log names the user (logging.user: full), not an account id
    assert f"event=gateway_sync_failed user={name} upstream=dc reason=auth_rejected" in err
    assert "account=" not in err


def test_refused_user_leaves_no_account(dovecot, user, tmp_path, monkeypatch):
    import trio

    from proxy.store import open_store

    name, password = user
    config = write_config(tmp_path, dovecot)

    async def account():
        store = await open_store(str(tmp_path / "s.db"))
        try:
            return await store.get_account("dc", name)
        finally:
            await store.close()

    monkeypatch.setenv(sync_cli.PASSWORD_ENV, "wrong")
    assert sync_cli.main(["--config", config, name]) == 1
    assert trio.run(account) is None
    monkeypatch.setenv(sync_cli.PASSWORD_ENV, password)
    assert sync_cli.main(["--config", config, name]) == 0
    assert trio.run(account).user == name


def test_add_cli_wires_gateway_sync():
    parser = argparse.ArgumentParser()
    sync_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gateway", "sync", "--config", "c.yaml", "alice"])
    assert (args.command, args.gateway_command, args.user, args.config) == (
        "gateway", "sync", "alice", "c.yaml")


def test_progress_bar_draws_in_place(capsys):
    import sys

    bar = sync_cli.ProgressBar(sys.stderr)
    bar(50, 200, 2_000_000)
    bar(200, 200, 8_000_000)
    bar.finish()
    err = capsys.readouterr().err
    assert "\r[#######" in err and "200/200 messages, 8.0 MB\n" in err
