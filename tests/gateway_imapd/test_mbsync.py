"""mbsync (Debian isync) syncs a gateway account to a maildir and back; a second run changes
nothing (issue 7)."""

from __future__ import annotations

import pathlib
import shutil

import pytest
import trio

from .conftest import message

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync not installed")


def _config(tmp: pathlib.Path, gateway) -> pathlib.Path:
    mail = tmp / "mail"
    mail.mkdir(exist_ok=True)
    cfg = tmp / "mbsyncrc"
    cfg.write_text(f"""
IMAPAccount gw
Host 127.0.0.1
Port {gateway.port}
User {gateway.user}
Pass {gateway.password}
SSLType None
AuthMechs LOGIN

IMAPStore gw-remote
Account gw

MaildirStore local
Path {mail}/
Inbox {mail}/INBOX
SubFolders Verbatim

Channel gw
Far :gw-remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return cfg


async def _mbsync(cfg: pathlib.Path) -> str:
    result = await trio.run_process(["mbsync", "-c", str(cfg), "-a", "-V"], capture_stdout=True,
                                    capture_stderr=True, check=False)
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    return out


async def test_mbsync_round_trip(gateway, tmp_path):
    for n in range(4):
        gateway.deliver(message(n))
    cfg = _config(tmp_path, gateway)
    await _mbsync(cfg)
    inbox = tmp_path / "mail" / "INBOX"
    assert len(list((inbox / "cur").iterdir()) + list((inbox / "new").iterdir())) == 4
    # local changes: flag a message, a new folder with a message, a message saved to Sent
    first = sorted((inbox / "cur").iterdir())[0] if list((inbox / "cur").iterdir()) else \
        sorted((inbox / "new").iterdir())[0]
    flagged = inbox / "cur" / (first.name.split(":2,")[0] + ":2,FS")
    first.rename(flagged)
    for folder, data in (("Projects", message(10)), ("Sent", message(11))):
        path = tmp_path / "mail" / folder
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / "cur" / f"1700000000.local{folder}:2,S").write_bytes(data)
    await _mbsync(cfg)
    before = (_maildir(tmp_path / "mail"), await trio.to_thread.run_sync(_server, gateway))
    await _mbsync(cfg)   # nothing changed since: nothing may move on either side
    after = (_maildir(tmp_path / "mail"), await trio.to_thread.run_sync(_server, gateway))
    assert before == after

    def check():
        c = gateway.imapclient()
        assert "Projects" in [n for _, _, n in c.list_folders()]
        c.select_folder("INBOX")
        flags = c.get_flags(c.search(["ALL"]))
        assert sum(b"\\Flagged" in f and b"\\Seen" in f for f in flags.values()) == 1
        c.select_folder("Sent")
        assert len(c.search(["ALL"])) == 1
        c.select_folder("Projects")
        assert len(c.search(["ALL"])) == 1
        c.logout()
    await trio.to_thread.run_sync(check)


def _maildir(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.parent.name in ("cur", "new")}


def _server(gateway) -> dict:
    c = gateway.imapclient()
    state = {}
    for _, _, name in c.list_folders():
        c.select_folder(name, readonly=True)
        state[name] = {uid: set(f) - {b"\\Recent"} for uid, f in c.get_flags(c.search(["ALL"])).items()}
    c.logout()
    return state
