"""Real sync clients on one gateway account (issues 7 and 8).

* Two `mbsync` "devices" (Debian isync), each with its own maildir and sync state: flags set on
  device 1 reach device 2 after device 1 and then device 2 sync; a message device 2 saves into
  Sent reaches device 1; nothing is lost or duplicated (message sets compared by SHA-256 of the
  file with mbsync's X-TUID header stripped); a further sync changes nothing.
* `offlineimap` (Debian offlineimap3) syncs the account to a maildir and back (a flag change, a
  new folder) with no errors, and a second run changes nothing.
"""

from __future__ import annotations

import collections
import hashlib
import pathlib
import re
import shutil

import pytest
import trio

from .conftest import message
from .test_mbsync import _config, _mbsync

run = trio.to_thread.run_sync
_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE | re.IGNORECASE)


def _digest(data: bytes) -> str:
    """Maildir files hold LF line ends (both clients convert), IMAP has CRLF: compare in LF,
    without the X-TUID header mbsync puts into messages it uploads."""
    head, sep, body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
    return hashlib.sha256(_TUID.sub(b"", head + b"\n") + sep + body).hexdigest()


def _maildir_state(root: pathlib.Path) -> dict[str, collections.Counter]:
    """folder -> Counter of (digest, maildir flags) over the messages in cur/ and new/."""
    state: dict[str, collections.Counter] = {}
    for sub in root.rglob("*"):
        if sub.name not in ("cur", "new") or not sub.is_dir():
            continue
        folder = str(sub.parent.relative_to(root)) or "INBOX"
        counter = state.setdefault(folder, collections.Counter())
        for path in sub.iterdir():
            flags = path.name.split(":2,", 1)[1] if ":2," in path.name else ""
            counter[(_digest(path.read_bytes()), "".join(sorted(flags)))] += 1
    return state


_IMAP_TO_MAILDIR = {b"\\Seen": "S", b"\\Flagged": "F", b"\\Answered": "R", b"\\Draft": "D",
                    b"\\Deleted": "T"}


def _server_state(gateway) -> dict[str, collections.Counter]:
    """The same view of the gateway account: folder -> Counter of (digest, maildir flags)."""
    c = gateway.imapclient()
    state: dict[str, collections.Counter] = {}
    for _, _, name in c.list_folders():
        c.select_folder(name, readonly=True)
        uids = c.search(["ALL"])
        data = c.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
        state[name] = collections.Counter(
            (_digest(v[b"BODY[]"]), "".join(sorted(_IMAP_TO_MAILDIR.get(f, "") for f in v[b"FLAGS"])))
            for v in data.values())
    c.logout()
    return state


def _nonempty(state: dict) -> dict:
    return {folder: counter for folder, counter in state.items() if counter}


def _messages(root: pathlib.Path, folder: str) -> list[pathlib.Path]:
    base = root / folder
    return sorted(list((base / "cur").iterdir()) + list((base / "new").iterdir()))


def _save(root: pathlib.Path, folder: str, name: str, data: bytes, flags: str = "S") -> None:
    base = root / folder
    for sub in ("cur", "new", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "cur" / f"{name}:2,{flags}").write_bytes(data)


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync not installed")
async def test_two_mbsync_devices(gateway, tmp_path):
    for n in range(5):
        gateway.deliver(message(n))
    devices = []
    for n in (1, 2):
        home = tmp_path / f"device{n}"
        home.mkdir()
        devices.append((_config(home, gateway), home / "mail"))
    (cfg1, mail1), (cfg2, mail2) = devices
    await _mbsync(cfg1)
    await _mbsync(cfg2)
    assert len(_messages(mail1, "INBOX")) == len(_messages(mail2, "INBOX")) == 5

    # device 1 reads and flags the second message (in maildir terms: renames the file)
    target = _messages(mail1, "INBOX")[1]
    digest = _digest(target.read_bytes())
    target.rename(mail1 / "INBOX" / "cur" / (target.name.split(":2,")[0] + ":2,FS"))
    await _mbsync(cfg1)
    await _mbsync(cfg2)
    on2 = {_digest(p.read_bytes()): p.name for p in _messages(mail2, "INBOX")}
    assert on2[digest].endswith(":2,FS"), on2

    # device 2 saves a sent message; device 1 gets it
    sent = message(20, subject="sent from device 2", sender="bob@example.com")
    _save(mail2, "Sent", "1700000100.device2", sent)
    await _mbsync(cfg2)
    await _mbsync(cfg1)
    assert [_digest(p.read_bytes()) for p in _messages(mail1, "Sent")] == [_digest(sent)]

    # nothing lost or duplicated: both devices and the server hold the same messages and flags
    state1, state2 = _maildir_state(mail1), _maildir_state(mail2)
    server = await run(_server_state, gateway)
    assert _nonempty(state1) == _nonempty(state2) == _nonempty(server), (state1, state2, server)
    assert sum(server["INBOX"].values()) == 5 and sum(server["Sent"].values()) == 1
    assert all(count == 1 for counter in server.values() for count in counter.values())

    # another round on both devices changes nothing anywhere
    files = (sorted(p.name for p in mail1.rglob("*")), sorted(p.name for p in mail2.rglob("*")))
    await _mbsync(cfg1)
    await _mbsync(cfg2)
    assert (sorted(p.name for p in mail1.rglob("*")), sorted(p.name for p in mail2.rglob("*"))) == files
    assert await run(_server_state, gateway) == server


def _offlineimaprc(tmp: pathlib.Path, gateway) -> pathlib.Path:
    cfg = tmp / "offlineimaprc"
    cfg.write_text(f"""
[general]
metadata = {tmp}/oi-meta
accounts = gw
ui = basic
maxsyncaccounts = 1

[Account gw]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {tmp}/oi-mail
sep = /

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {gateway.port}
remoteuser = {gateway.user}
remotepass = {gateway.password}
ssl = no
starttls = no
maxconnections = 1
""")
    return cfg


async def _offlineimap(cfg: pathlib.Path) -> str:
    result = await trio.run_process(["offlineimap", "-c", str(cfg), "-o"], capture_stdout=True,
                                    capture_stderr=True, check=False)
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    assert not re.search(r"ERROR|Traceback|WARNING", out), out
    return out


@pytest.mark.skipif(shutil.which("offlineimap") is None, reason="offlineimap not installed")
async def test_offlineimap_round_trip(gateway, tmp_path):
    for n in range(3):
        gateway.deliver(message(n))
    cfg = _offlineimaprc(tmp_path, gateway)
    mail = tmp_path / "oi-mail"
    await _offlineimap(cfg)
    inbox = _messages(mail, "INBOX")
    assert len(inbox) == 3, sorted(p.name for p in mail.rglob("*"))

    # a flag change and a new folder with a message, made locally
    target = inbox[0]
    digest = _digest(target.read_bytes())
    stem, _, flags = target.name.partition(":2,")
    target.rename(mail / "INBOX" / "cur" / f"{stem}:2,{''.join(sorted(set(flags + 'FS')))}")
    project = message(30, subject="a project note")
    _save(mail, "Projects", "1700000300.local", project)
    await _offlineimap(cfg)

    server = await run(_server_state, gateway)
    assert (digest, "FS") in server["INBOX"], server["INBOX"]
    assert server["Projects"] == collections.Counter({(_digest(project), "S"): 1}), server
    assert _nonempty(_maildir_state(mail)) == _nonempty(server)

    # a second run changes nothing, on either side
    files = sorted(str(p.relative_to(mail)) for p in mail.rglob("*") if p.parent.name in ("cur", "new"))
    await _offlineimap(cfg)
    assert sorted(str(p.relative_to(mail)) for p in mail.rglob("*")
                  if p.parent.name in ("cur", "new")) == files
    assert await run(_server_state, gateway) == server
