"""A real, private Dovecot 2.3 for tests: loopback only, free ports, passwd-file users, maildir.

Theory of operation
-------------------
`start_dovecot(base_dir)` fills in `dovecot.conf.in` (a copy of shared/notes/dovecot-test.conf) for a
new directory under `base_dir`, checks it with `doveconf -n`, and starts `dovecot -c FILE`. The master
daemonizes; its stdout/stderr go to a file (a pipe inherited by the daemon would block us forever).
It is ready when both the IMAP and POP3 ports answer with a greeting. `stop()` runs `dovecot -c FILE
stop` and waits until the master pid is gone (SIGKILL after a bounded wait).

Dovecot runs as root (the tests do) and serves mail as the unprivileged system user `mailproxytest`
(created by scripts/install-test-deps.sh). The auth process runs as `dovecot`, the mail processes as
`mailproxytest`: so the instance directory and all of its ancestors must be traversable by others
(pytest's own tmp_path is not: `/tmp/pytest-of-root` is 0700). The fixtures use a private 0711
directory under the system temp dir for that reason.

Layout of an instance directory::

    dovecot.conf  dovecot.log  dovecot.out (master's stdout/stderr)  users/<name> (passwd-files)
    run/ (base_dir)  state/  mail/<user>/{cur,new,tmp}  mail/<user>/.<Folder>/{cur,new,tmp}

Mail uses Dovecot's default maildir layout (Maildir++): the user's INBOX is the maildir root and every
other folder is a `.Name` directory beside cur/new/tmp. The namespace's IMAP separator is "/", but on
disk Maildir++ joins hierarchy levels with ".", so IMAP "Archive/2024" is `.Archive.2024` (and a folder
name cannot itself contain "."). Non-ASCII names are stored in IMAP's modified UTF-7.

Users live in one passwd-file per user, `users/<name>` (written atomically). The notes' single
`users` file does not work for users added while Dovecot runs: its passwd-file driver re-checks a
file at most once per second, so a user appended within the second of an earlier login is "unknown".
A new user is a new file, read on its first lookup, so users added at any time can log in.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

from . import polling
from .daemon import greets, wait_ready
from .ports import free_ports

__all__ = ["Dovecot", "DovecotError", "MAIL_USER", "MISSING_MESSAGE", "ROOT_PREFIX", "free_ports",
           "make_root", "reap_stale_roots", "start_dovecot"]

MAIL_USER = "mailproxytest"
ROOT_PREFIX = "mailproxy-tests-"
OWNER_FILE = "owner.pid"      # in a root: the pid of the test run that made it
MISSING_MESSAGE = "install dovecot-imapd and dovecot-pop3d (make test does this)"
TEMPLATE = pathlib.Path(__file__).with_name("dovecot.conf.in")
START_TIMEOUT = 60.0   # a bound only a broken build reaches, even at load 20 on 2 cores
STOP_TIMEOUT = 10.0
MAILDIR_FLAGS = "DFPRST"  # Draft, Flagged, Passed (forwarded), Replied, Seen, Trashed (deleted)
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])

_instances = itertools.count(1)
_users = itertools.count(1)
_deliveries = itertools.count(1)
_delivery_lock = threading.Lock()
_last_stamp_us = 0


class DovecotError(AssertionError):
    """Dovecot could not be set up, started or used. An AssertionError so tests report it as a failure."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SBIN_PATH)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie nobody has reaped yet counts as gone
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _check_traversable(path: pathlib.Path) -> None:
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise DovecotError(
                f"{part} is not traversable by others (mode {stat.filemode(mode)}); Dovecot's auth and "
                f"mail processes run as 'dovecot' and '{MAIL_USER}' and must reach {path}. "
                "Use a directory like the fixtures' (tempfile.mkdtemp + chmod 0o711).")


def _maildir_folder_name(folder: str) -> str:
    """IMAP folder name -> the Maildir++ directory name ("" for INBOX)."""
    if folder.upper() == "INBOX":
        return ""
    if not folder or "." in folder or folder.startswith("/") or folder.endswith("/") or "//" in folder:
        raise ValueError(f"folder {folder!r} cannot be stored in Maildir++ with separator '/'")
    if not folder.isascii():
        from imapclient import imap_utf7

        folder = imap_utf7.encode(folder).decode("ascii")
    return "." + folder.replace("/", ".")


def _unique_maildir_name(size: int) -> str:
    """A maildir base name whose timestamp strictly increases, so Dovecot assigns UIDs in delivery order
    (its uidlist sorts new files by the `<secs>.M<usecs>` of their names)."""
    global _last_stamp_us
    with _delivery_lock:
        now_us = max(time.time_ns() // 1000, _last_stamp_us + 1)
        _last_stamp_us = now_us
        seq = next(_deliveries)
    secs, usecs = divmod(now_us, 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{seq}.mailproxytest,S={size}"


class Dovecot:
    """One running private Dovecot instance. Create it with `start_dovecot()`."""

    host: str
    imap_port: int
    pop3_port: int
    imaps_port: int | None
    pop3s_port: int | None
    dir: pathlib.Path

    def __init__(self, dir: pathlib.Path, name: str, *, tls: tuple[pathlib.Path, pathlib.Path] | None,
                 ssl_required: bool, extra_config: str = "", host: str = "127.0.0.1",
                 ports: tuple[int, int] | None = None):
        self.extra_config = extra_config
        self.fixed_ports = ports
        self.host = host
        self.dir = dir
        self.name = name
        self.tls = tls
        self.ssl_required = ssl_required
        self.config_path = dir / "dovecot.conf"
        self.users_path = dir / "users"
        self.mail_root = dir / "mail"
        self.users: dict[str, str] = {}
        self.imap_port = self.pop3_port = 0
        self.imaps_port = self.pop3s_port = None
        self.master_pid: int | None = None
        self._lock = threading.Lock()
        entry = pwd.getpwnam(MAIL_USER)
        self._uid, self._gid = entry.pw_uid, entry.pw_gid

    def __repr__(self) -> str:
        return (f"<Dovecot {self.name} imap={self.imap_port} pop3={self.pop3_port} "
                f"imaps={self.imaps_port} pop3s={self.pop3s_port} dir={self.dir}>")

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users and mail ------------------------------------------------------------------------------

    def add_user(self, name: str | None = None, password: str | None = None) -> tuple[str, str]:
        """Add a passwd-file user (default: a fresh `u<N>@example.com` and a random password).

        Works while Dovecot runs (see the module docstring). Changing an existing user's password is
        not supported: Dovecot could keep the old one for up to a second.
        """
        if name is None:
            name = f"u{next(_users)}@example.com"
            while name in self.users:
                name = f"u{next(_users)}@example.com"
        if password is None:
            password = secrets.token_urlsafe(12)
        for value in (name, password):
            if not value or any(c in value for c in ":\r\n\0") or value != value.strip():
                raise ValueError(f"not usable in a passwd-file: {value!r}")
        if "/" in name or name.startswith("."):
            raise ValueError(f"user name {name!r} cannot be a mail directory name")
        with self._lock:
            if name in self.users:
                raise ValueError(f"user {name!r} already exists")
            self.users[name] = password
            self._write_user(name, password)
        return name, password

    def _write_user(self, name: str, password: str) -> None:
        tmp = self.users_path / f".{name}.tmp"
        tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        tmp.chmod(0o644)
        os.replace(tmp, self.users_path / name)

    def maildir(self, user: str, folder: str = "INBOX") -> pathlib.Path:
        """The maildir holding `folder` of `user` (created, with cur/new/tmp, owned by the mail user)."""
        root = self.mail_root / user
        path = root / _maildir_folder_name(folder) if folder.upper() != "INBOX" else root
        for directory in (root, path):
            self._make_dir(directory)
            for sub in ("cur", "new", "tmp"):
                self._make_dir(directory / sub)
        if path != root and not (path / "maildirfolder").exists():
            marker = path / "maildirfolder"
            marker.touch()
            os.chown(marker, self._uid, self._gid)
        return path

    def _make_dir(self, path: pathlib.Path) -> None:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            return
        os.chown(path, self._uid, self._gid)

    def deliver(self, user: str, message: bytes, folder: str = "INBOX", flags: str = "") -> None:
        """Put `message` (exact bytes, CRLF or LF as given) into `folder` of `user`.

        With no flags the file goes to new/ (a \\Recent, unseen message); with maildir flags
        (letters of "DFPRST", e.g. "S" for \\Seen) it goes to cur/ as `name:2,FLAGS`. Folders other
        than INBOX are created as needed. Messages get UIDs in the order they were delivered.
        """
        if not isinstance(message, (bytes, bytearray)):
            raise TypeError("message must be bytes")
        bad = set(flags) - set(MAILDIR_FLAGS)
        if bad:
            raise ValueError(f"unknown maildir flags {''.join(sorted(bad))!r}; "
                             f"use letters of {MAILDIR_FLAGS}")
        path = self.maildir(user, folder)
        base = _unique_maildir_name(len(message))
        tmp = path / "tmp" / base
        with open(tmp, "xb") as fh:
            fh.write(message)
        os.chown(tmp, self._uid, self._gid)
        os.chmod(tmp, 0o600)
        if flags:
            final = path / "cur" / f"{base}:2,{''.join(sorted(set(flags)))}"
        else:
            final = path / "new" / base
        os.rename(tmp, final)

    # -- logs and lifecycle --------------------------------------------------------------------------

    def log(self) -> str:
        """The content of dovecot.log (the master's stdout/stderr is in dovecot.out)."""
        return _read(self.dir / "dovecot.log")

    def wait_for_log(self, text: str, timeout: float = polling.TIMEOUT) -> str:
        """Wait until dovecot.log contains `text` and return the log. Dovecot writes its log from a
        separate process, so a line about a session may appear after the client has seen the reply.
        Raises DovecotError with the log tail on timeout."""
        def log_with_text() -> str:
            log = self.log()
            return log if text in log else ""

        log = polling.poll(log_with_text, timeout)
        if not log:
            raise DovecotError(f"{text!r} not in {self.dir}/dovecot.log after {timeout:.0f}s:\n"
                               + _tail(self.log()))
        return log

    def _diagnostics(self) -> str:
        return (f"--- {self.dir}/dovecot.out ---\n{_tail(_read(self.dir / 'dovecot.out'))}\n"
                f"--- {self.dir}/dovecot.log (tail) ---\n{_tail(self.log())}")

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.dir / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop Dovecot and wait for its master to exit (SIGKILL after a bounded wait). Idempotent."""
        pid = self.master_pid or self._read_master_pid()
        if pid is None or not _pid_alive(pid):
            self.master_pid = None
            return
        dovecot = _which("dovecot") or "dovecot"
        with open(self.dir / "dovecot.out", "ab") as out:
            stopper = subprocess.Popen([dovecot, "-c", str(self.config_path), "stop"],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        polling.poll(lambda: not _pid_alive(pid), STOP_TIMEOUT)
        # `dovecot stop` itself polls the master once a second: once the master is gone, don't wait
        try:
            stopper.wait(0.2)
        except subprocess.TimeoutExpired:
            stopper.kill()
            stopper.wait()
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # the master leads its own process group
            except OSError:
                os.kill(pid, signal.SIGKILL)
        self.master_pid = None

    def _render_config(self) -> str:
        if self.tls:
            cert, key = self.tls
            ssl = "required" if self.ssl_required else "yes"
            ssl_settings = (f"ssl_cert = <{pathlib.Path(cert).resolve()}\n"
                            f"ssl_key = <{pathlib.Path(key).resolve()}")
        else:
            ssl, ssl_settings = "no", ""
        values = {
            "@NAME@": self.name, "@DIR@": str(self.dir), "@MAILUSER@": MAIL_USER, "@HOST@": self.host,
            "@IMAP_PORT@": str(self.imap_port), "@POP3_PORT@": str(self.pop3_port),
            "@IMAPS_PORT@": str(self.imaps_port or 0), "@POP3S_PORT@": str(self.pop3s_port or 0),
            "@SSL@": ssl, "@SSL_SETTINGS@": ssl_settings,
        }
        # the template's header comments name the placeholders: leave them out
        text = "".join(line for line in TEMPLATE.read_text().splitlines(keepends=True)
                       if not line.startswith("#"))
        for key, value in values.items():
            text = text.replace(key, value)
        return text + self.extra_config

    def start(self) -> None:
        """Start again after `stop()`: the same users and mail (and ports, when fixed)."""
        self._start()

    def _start(self) -> None:
        dovecot, doveconf = _which("dovecot"), _which("doveconf")
        if dovecot is None or doveconf is None:
            raise DovecotError(MISSING_MESSAGE)
        for attempt in range(3):  # ports picked free can be taken by someone else before Dovecot binds
            ports = free_ports(4 if self.tls else 2, self.host)
            if self.fixed_ports is not None:
                ports[:2] = self.fixed_ports
            self.imap_port, self.pop3_port = ports[:2]
            self.imaps_port, self.pop3s_port = (ports[2], ports[3]) if self.tls else (None, None)
            self.config_path.write_text(self._render_config())
            check = subprocess.run([doveconf, "-c", str(self.config_path), "-n"], stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, timeout=30, check=False)
            if check.returncode != 0:
                raise DovecotError(f"doveconf -c {self.config_path} -n failed (exit {check.returncode}):\n"
                                   f"{check.stdout}{check.stderr}")
            with open(self.dir / "dovecot.out", "ab") as out:
                started = subprocess.run([dovecot, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, timeout=30, check=False)
            if started.returncode == 0:
                break
            in_use = "Address already in use" in self.log() + _read(self.dir / "dovecot.out")
            if not in_use or attempt == 2:
                raise DovecotError(f"dovecot -c {self.config_path} exited {started.returncode}\n"
                                   + self._diagnostics())
        self.master_pid = self._read_master_pid()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        if self.master_pid is None:   # the daemon had not written it yet when `dovecot` returned
            self.master_pid = self._read_master_pid()

    def _wait_ready(self) -> None:
        def master_alive() -> bool:
            pid = self.master_pid or self._read_master_pid()
            return pid is None or _pid_alive(pid)

        wait_ready("Dovecot", {f"IMAP port {self.imap_port}": greets(self.imap_port, b"* OK", self.host),
                               f"POP3 port {self.pop3_port}": greets(self.pop3_port, b"+OK", self.host)},
                   alive=master_alive, log=self._diagnostics, timeout=START_TIMEOUT, error=DovecotError)


def start_dovecot(base_dir: pathlib.Path, *, tls: tuple[pathlib.Path, pathlib.Path] | None = None,
                  ssl_required: bool = False, extra_config: str = "", host: str = "127.0.0.1",
                  ports: tuple[int, int] | None = None) -> Dovecot:
    """Start a private Dovecot in a new directory under `base_dir` and return it once it serves.

    Args:
        base_dir: where the instance's own directory is made; it and its ancestors must be
            traversable by other users (see the module docstring).
        tls: `(cert_pem, key_pem)` to enable TLS: `ssl = yes` (STARTTLS/STLS on the plain ports) and
            imaps/pop3s listeners on their own free ports.
        ssl_required: with `tls`, `ssl = required` instead of `yes`. Note that Dovecot treats
            loopback (and `login_trusted_networks`, 127.0.0.0/8 here) as secure, so plaintext logins
            from 127.0.0.1 still succeed.
        extra_config: Dovecot settings appended to the config (a later setting wins; blocks such
            as another `passdb { }` add to the template's).
        host: the loopback address it listens on (127.0.0.2 etc. for a second "host" that shares
            another instance's ports, as the members of an upstream pool do).
        ports: `(imap_port, pop3_port)` to listen on instead of free ones.

    Raises:
        DovecotError: Dovecot is missing, the config is invalid, or it did not become ready (the
            message carries the log tail).
    """
    if _which("dovecot") is None or _which("doveconf") is None:
        raise DovecotError(MISSING_MESSAGE)
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        raise DovecotError(f"system user {MAIL_USER!r} is missing: run scripts/install-test-deps.sh "
                           "(make test does this)") from None
    if ssl_required and not tls:
        raise ValueError("ssl_required needs tls=(cert, key)")
    base_dir = pathlib.Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    number = next(_instances)
    name = f"mailproxy-test-{os.getpid()}-{number}"
    directory = base_dir / f"dovecot-{number}"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    _check_traversable(directory)
    for sub in ("run", "state"):
        (directory / sub).mkdir(mode=0o755)
    instance = Dovecot(directory, name, tls=tls, ssl_required=ssl_required, extra_config=extra_config,
                       host=host, ports=ports)
    mail = directory / "mail"
    mail.mkdir(mode=0o755)
    os.chown(mail, instance._uid, instance._gid)
    instance.users_path.mkdir(mode=0o755)
    instance._start()
    return instance


def make_root() -> pathlib.Path:
    """A new private directory for instances, traversable by Dovecot's unprivileged processes (0711)
    under the system temp dir. Stale ones left by killed test runs are removed first."""
    reap_stale_roots()
    root = pathlib.Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    root.chmod(0o711)
    (root / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return root


def _root_owner(root: pathlib.Path) -> int | None:
    try:
        return int((root / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _owner_pid(conf: pathlib.Path) -> int | None:
    match = re.search(r"^instance_name = mailproxy-test-(\d+)-\d+$", _read(conf), re.MULTILINE)
    return int(match.group(1)) if match else None


def reap_stale_roots() -> None:
    """Stop the Dovecots and PostgreSQL clusters and remove the directories of test runs that died
    without cleaning up (a killed pytest cannot run its teardown). A root is stale when the
    process that made it (its `owner.pid`) no longer runs, or, for a root without one, when every
    Dovecot in it was started by a process that no longer runs (instance names carry that pid)."""
    from support.postgres import stop_stale_clusters  # postgres.py imports this module

    for root in pathlib.Path(tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            confs = list(root.glob("dovecot-*/dovecot.conf"))
            owner = _root_owner(root)
            owners = {_owner_pid(conf) for conf in confs} if owner is None else {owner}
            if not owners or None in owners or any(_pid_alive(pid) for pid in owners):
                continue  # not ours, or still in use (an empty root may be a run that just began)
            stop_stale_clusters(root)
            for conf in confs:
                pid_file = conf.parent / "run" / "master.pid"
                try:
                    pid = int(pid_file.read_text().split()[0])
                    cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
                except (OSError, ValueError, IndexError):
                    continue
                if str(conf).encode() in cmdline and _pid_alive(pid):
                    os.kill(pid, signal.SIGTERM)
                    if not polling.poll(lambda pid=pid: not _pid_alive(pid), STOP_TIMEOUT):
                        os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)
        except OSError:
            continue
