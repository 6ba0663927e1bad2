"""Real mail clients through the relay: mbsync (Debian isync), curl (IMAP and POP3) and fetchmail.

Each client is run once through the proxy and, where a comparison is the point, once directly
against the same Dovecot; the results must be the same. A missing binary fails the test with the
Debian package to install (`make test` installs them).
"""

from __future__ import annotations

import collections
import hashlib
import os
import pathlib
import poplib
import re
import shutil
import subprocess

import pytest

HOST = "127.0.0.1"
RUN_TIMEOUT = 60


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: install the Debian package '{package}' "
                    f"(apt-get install {package}; make test does this)", pytrace=False)
    return path


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL, **kwargs)


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject.encode() +
            b"\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <" + os.urandom(6).hex().encode()
            + b"@example.com>\r\n\r\n" + body)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- mbsync

# folder -> list of (maildir flags, body); 30 messages with the IMAP system flags mbsync syncs
# (maildir D, F, R, S; P has no IMAP flag in Dovecot without keywords, so it is left out), a dotted
# body, 8-bit text and a message over 1 MB (a FETCH literal spanning many relay chunks).
def _mailbox() -> dict[str, list[tuple[str, bytes]]]:
    big = b"".join(b"%06d " % i + os.urandom(40).hex().encode() + b"\r\n" for i in range(14_000))
    folders: dict[str, list[tuple[str, bytes]]] = {
        "INBOX": [], "Archive": [], "Archive/2024": [], "Sent": [],
    }
    flag_cycle = ["", "S", "FS", "RS", "D", "DRS", "F", ""]
    n = 0
    for folder, count in (("INBOX", 12), ("Archive", 8), ("Archive/2024", 6), ("Sent", 4)):
        for _ in range(count):
            n += 1
            body = b"Message %d in %s.\r\n" % (n, folder.encode())
            if n == 3:
                body = b".leading dot\r\n..two dots\r\n.\r\nend\r\n"
            elif n == 5:
                body = "Grüße, naïve café\r\n".encode("utf-8")
            elif n == 7:
                body = big
            folders[folder].append((flag_cycle[n % len(flag_cycle)], message(f"m{n}", body)))
    return folders


MBSYNCRC = """\
IMAPAccount acc
Host {host}
Port {port}
User {user}
Pass {password}
SSLType None
AuthMechs LOGIN

IMAPStore far
Account acc

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :far:
Near :near:
Patterns *
Create Near
SyncState *
"""


def _mbsync(mbsync: str, tmp_path: pathlib.Path, label: str, port: int, user: str,
            password: str) -> pathlib.Path:
    maildir = tmp_path / label
    maildir.mkdir()
    rc = tmp_path / f"mbsyncrc-{label}"
    rc.write_text(MBSYNCRC.format(host=HOST, port=port, user=user, password=password,
                                  maildir=maildir))
    rc.chmod(0o600)
    result = run([mbsync, "-c", str(rc), "-a"], env={**os.environ, "HOME": str(tmp_path)})
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"mbsync ({label}) exited {result.returncode}:\n{stderr}"
    # Only the plaintext-password warning and "no UIDVALIDITY, creating new" notices are expected.
    unexpected = [line for line in stderr.splitlines() if line.strip()
                  and "Password is being sent in the clear" not in line
                  and "notice: no UIDVALIDITY" not in line]
    assert not unexpected, f"mbsync ({label}) reported:\n{stderr}"
    return maildir


_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)


def _maildir_contents(root: pathlib.Path) -> collections.Counter:
    """(folder, new|cur, sha256 of the content, flags) for every message file. mbsync adds an
    `X-TUID:` header with a random value to each message it stores: it is removed first."""
    found: collections.Counter = collections.Counter()
    for path in root.rglob("*"):
        if not path.is_file() or path.name.startswith(".") or path.parent.name not in ("cur", "new"):
            continue
        folder = path.parent.parent.relative_to(root).as_posix()
        flags = path.name.rpartition(":2,")[2] if ":2," in path.name else ""
        content = _TUID.sub(b"", path.read_bytes(), count=1)
        found[(folder, path.parent.name, sha(content), flags)] += 1
    return found


def test_mbsync_through_proxy_equals_direct(relay_proxy, dovecot, user, tmp_path):
    mbsync = require("mbsync", "isync")
    name, password = user
    mailbox = _mailbox()
    for folder, messages in mailbox.items():
        for flags, msg in messages:
            dovecot.deliver(name, msg, folder=folder, flags=flags)
    via_proxy = _maildir_contents(_mbsync(mbsync, tmp_path, "proxy", relay_proxy.port("imap"),
                                          name, password))
    direct = _maildir_contents(_mbsync(mbsync, tmp_path, "direct", dovecot.imap_port, name,
                                       password))
    assert sum(direct.values()) == 30, direct
    assert via_proxy == direct
    # and both hold exactly what was delivered (mbsync stores LF line ends), with its flags
    expected = collections.Counter(
        (folder, sha(msg.replace(b"\r\n", b"\n")), "".join(sorted(flags)))
        for folder, messages in mailbox.items() for flags, msg in messages)
    got = collections.Counter((f, digest, "".join(sorted(fl))) for (f, _, digest, fl), n
                              in via_proxy.items() for _ in range(n))
    assert got == expected


# --------------------------------------------------------------------------- curl


def _curl(curl: str, url: str, user: tuple[str, str], *extra: str) -> bytes:
    result = run([curl, "--silent", "--show-error", "--max-time", "30", "--user",
                  f"{user[0]}:{user[1]}", *extra, url])
    assert result.returncode == 0, (f"curl {url} {extra} exited {result.returncode}: "
                                    f"{result.stderr.decode(errors='replace')}")
    return result.stdout


def test_curl_imap_lists_and_fetches(relay_proxy, dovecot, user):
    curl = require("curl", "curl")
    name, password = user
    small = message("small", b".dot\r\nline\r\n")
    big = message("big", b"".join(b"%06d " % i + os.urandom(30).hex().encode() + b"\r\n"
                                  for i in range(40_000)))  # ~2.7 MB: many relay chunks
    dovecot.deliver(name, small)
    dovecot.deliver(name, big, flags="S")
    dovecot.deliver(name, message("archived"), folder="Archive")
    base = f"imap://{HOST}:{relay_proxy.port('imap')}"
    listing = _curl(curl, base + "/", user)
    assert b'"/" INBOX\r\n' in listing and b'"/" Archive\r\n' in listing, listing
    assert _curl(curl, base + "/INBOX?ALL", user) == b"* SEARCH 1 2\r\n"
    flags = _curl(curl, base + "/INBOX", user, "--request", "FETCH 1:* (FLAGS)")
    assert flags == b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS (\\Seen))\r\n", flags
    assert _curl(curl, base + "/INBOX;UID=1", user) == small
    assert sha(_curl(curl, base + "/INBOX;UID=2", user)) == sha(big)


def test_curl_pop3_list_and_retr(relay_proxy, dovecot, user):
    curl = require("curl", "curl")
    name, password = user
    messages = [message("one"), message("dots", b".leading\r\n..two\r\n.\r\nend\r\n"),
                message("big", b"".join(b"%06d " % i + os.urandom(30).hex().encode() + b"\r\n"
                                        for i in range(30_000)))]
    for msg in messages:
        dovecot.deliver(name, msg)
    base = f"pop3://{HOST}:{relay_proxy.port('pop3')}"
    listing = _curl(curl, base + "/", user)
    assert listing == b"".join(b"%d %d\r\n" % (i, len(m)) for i, m in enumerate(messages, 1))
    for i, msg in enumerate(messages, 1):
        assert sha(_curl(curl, f"{base}/{i}", user)) == sha(msg), f"RETR {i} differs"


# --------------------------------------------------------------------------- fetchmail


FETCHMAILRC = """\
set no syslog
set invisible
poll {host} service {port} protocol POP3 auth password
  user "{user}" there with password "{password}"
  keep fetchall sslproto ""
  mda "cat > {out}/msg.$$"
"""


def test_fetchmail_keep_delivers_exactly_the_server_messages(relay_proxy, dovecot, user, tmp_path):
    fetchmail = require("fetchmail", "fetchmail")
    name, password = user
    messages = [message(f"f{i}") for i in range(5)]
    messages.append(message("dots", b".leading\r\n..two\r\n.\r\nend\r\n"))
    messages.append(message("big", b"".join(b"%06d " % i + os.urandom(30).hex().encode() + b"\r\n"
                                            for i in range(20_000))))
    for msg in messages:
        dovecot.deliver(name, msg)
    home = tmp_path / "home"
    out = tmp_path / "out"
    home.mkdir()
    out.mkdir()
    rc = home / ".fetchmailrc"
    rc.write_text(FETCHMAILRC.format(host=HOST, port=relay_proxy.port("pop3"), user=name,
                                     password=password, out=out))
    rc.chmod(0o600)
    # its lock (pid) file in this test's directory: as root fetchmail would use
    # /var/run/fetchmail.pid, which a concurrent test run on the same machine holds too
    result = run([fetchmail, "-f", str(rc), "--nodetach", "--verbose",
                  "--pidfile", str(home / "fetchmail.pid")],
                 env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}, cwd=home)
    report = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"fetchmail exited {result.returncode}:\n{report}"
    delivered = collections.Counter(sha(p.read_bytes()) for p in out.iterdir())
    # fetchmail hands the MDA LF line ends ("stripcr" is the default for an MDA)
    assert delivered == collections.Counter(sha(m.replace(b"\r\n", b"\n")) for m in messages), report
    assert "RETR 7" in report and "DELE" not in report
    direct = poplib.POP3(HOST, dovecot.pop3_port, timeout=10)  # keep: all still on the server
    direct.user(name)
    direct.pass_(password)
    assert direct.stat() == (len(messages), sum(len(m) for m in messages))
    direct.quit()
