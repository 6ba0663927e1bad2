"""`mailproxy --help`, every subcommand's --help and `mailproxy help CMD`: a one-line purpose and
an example each; `mailproxy gen-key` writes key files the store accepts."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import cli
from proxy.store import KeyRing


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
                          timeout=60)


def command_paths(parser=None, path=()) -> list[tuple[str, ...]]:
    parser = parser or cli._parser()
    paths = [path]
    for name, child in cli.subcommands(parser).items():
        paths += command_paths(child, path + (name,))
    return paths


def test_every_command_is_listed() -> None:
    assert set(command_paths()) == {(), ("serve",), ("check-config",), ("gen-cert",),
                                    ("gen-key",), ("gateway",), ("gateway", "sync"),
                                    ("gateway", "migrate"), ("gateway", "accounts"),
                                    ("gateway", "delete-account"), ("help",), ("who",),
                                    ("kick",), ("reload",), ("oauth2",), ("oauth2", "enrol"),
                                    ("oauth2", "hash-password")}


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "mailproxy")
def test_help_has_a_purpose_and_an_example(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    example = text.split("\nexample:\n", 1)[1]
    assert example.strip().startswith("mailproxy ") or "mailproxy " in example, example
    purpose = text.split("\n\n")[1].strip()   # after the usage block
    assert purpose and "\n" not in purpose.replace("\n  ", " "), purpose
    if path:
        assert run("help", *path).stdout == text


def test_help_for_an_unknown_command() -> None:
    result = run("help", "nope")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("mailproxy help: no command 'nope'; commands: serve, check-config, "
                             "gen-cert, gen-key, gateway, oauth2, who, kick, reload, help\n")


def test_gen_key_prints_or_appends_keys_the_store_accepts(tmp_path: Path) -> None:
    printed = run("gen-key", "--id", "k1")
    assert printed.returncode == 0
    assert KeyRing.parse(printed.stdout).current == "k1"
    key_file = tmp_path / "store.key"
    first = run("gen-key", "--id", "k1", "--out", str(key_file))
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = run("gen-key", "--id", "k2", "--out", str(key_file))
    assert second.stdout == (f"{key_file}: added key 'k2'; it encrypts new records, older keys "
                             f"still decrypt (restart mailproxy to use it)\n")
    ring = KeyRing.from_file(key_file)
    assert ring.current == "k2" and len(key_file.read_text().splitlines()) == 2
    again = run("gen-key", "--id", "k2", "--out", str(key_file))
    assert again.returncode == 2 and "key id 'k2' is already in the file" in again.stderr
    assert len(key_file.read_text().splitlines()) == 2
    bad = run("gen-key", "--id", "a:b")
    assert bad.returncode == 2 and bad.stderr.startswith("gen-key: --id 'a:b': ")
