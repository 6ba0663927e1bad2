"""A real, private PostgreSQL cluster for tests: `initdb` into a temp dir, own loopback port.

Theory of operation
-------------------
`start_postgres(base_dir)` finds Debian's server binaries (`/usr/lib/postgresql/<version>/bin`,
newest version first; scripts/install-test-deps.sh installs the `postgresql` package), runs
`initdb` into a new directory with password (SCRAM) authentication for one superuser, and starts
the server with `pg_ctl start -w` on a free loopback port, with its Unix socket in the instance
directory. No system service is used or touched.

PostgreSQL refuses to run as root. When the tests run as root (CI does), every server command
runs as the unprivileged `postgres` user (created by Debian's package) through `runuser`, so the
instance directory and its ancestors must be traversable by others: the fixtures use the 0711
root that `support.dovecot.make_root()` makes.

The cluster is for tests only: `fsync=off`, `synchronous_commit=off` and `full_page_writes=off`
make it fast and lose nothing unless the machine itself crashes. Tests get a fresh *schema* each
(`fresh_dsn()`: a URL whose `options` set `search_path` to a new schema of one session
database), so one cluster serves the whole session: a schema costs ~30 ms where CREATE DATABASE
costs 0.5-1 s here (it copies template0 or forces a checkpoint). `create_database()` is there for
the few tests that need a database of their own. Nothing is dropped after a test: the whole
cluster is deleted at the end of the session.

`restart()` stops the server (fast shutdown: sessions are cut) and starts it again on the same
port and directory, for the tests of what the gateway does while its database goes away.

Cleanup after a run that could not clean up: a SIGTERM'd pytest runs its teardowns (conftest.py
turns SIGTERM into KeyboardInterrupt), which stop the cluster. A SIGKILL'd one leaves its
postmaster running: the next run's `make_root()` (support/dovecot.py) finds roots whose owner is
gone and calls `stop_stale_clusters`, which stops every postmaster whose data directory is in
that root (checked against the process's command line, so a reused pid is never signalled).
"""

from __future__ import annotations

import glob
import itertools
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from urllib.parse import quote

from support import polling
from support.dovecot import free_ports

__all__ = ["PostgresError", "Postgres", "MISSING_MESSAGE", "find_bin_dir", "start_postgres",
           "stop_stale_clusters"]

MISSING_MESSAGE = ("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install "
                   "Debian's `postgresql` package (make test does this via scripts/install-test-deps.sh)")
RUN_USER = "postgres"
SUPERUSER = "mailproxy"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
_TOOLS = ("initdb", "pg_ctl", "postgres")
_instances = itertools.count(1)
_databases = itertools.count(1)


class PostgresError(AssertionError):
    """The cluster could not be set up or used. An AssertionError so tests report it as a failure."""


def find_bin_dir(pattern: str = "/usr/lib/postgresql/*/bin") -> pathlib.Path:
    """The newest PostgreSQL bin directory holding initdb, pg_ctl and postgres."""
    def version(path: str) -> tuple[int, ...]:
        name = pathlib.Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for candidate in sorted(glob.glob(pattern), key=version, reverse=True):
        if all(os.access(os.path.join(candidate, tool), os.X_OK) for tool in _TOOLS):
            return pathlib.Path(candidate)
    raise PostgresError(MISSING_MESSAGE)


def _as_server_user() -> list[str]:
    """The command prefix that runs a server command as an unprivileged user ([] when not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(RUN_USER)
    except KeyError:
        raise PostgresError(f"no `{RUN_USER}` system user: {MISSING_MESSAGE}") from None
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if runuser is None:
        raise PostgresError("runuser not found (util-linux): needed to run PostgreSQL as non-root")
    return [runuser, "-u", RUN_USER, "--"]


class Postgres:
    """One running cluster; see the module docstring."""

    def __init__(self, dir: pathlib.Path, bin_dir: pathlib.Path, port: int, password: str):
        self.dir, self.bin_dir, self.port, self.password = dir, bin_dir, port, password
        self.data = dir / "data"
        self.logfile = dir / "postgres.log"
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self._session_db: str | None = None

    def __repr__(self) -> str:
        return f"Postgres({self.dir}, port={self.port})"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        cmd = [*_as_server_user(), *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{args[0]} timed out after {timeout}s\n{self.log()}") from None
        if done.returncode != 0:
            raise PostgresError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}"
                                f"{done.stderr}\n{self.log()}")
        return done.stdout

    def log(self) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    def dsn(self, database: str = "postgres", *, with_password: bool = True,
            schema: str | None = None) -> str:
        """A libpq URL for `database` (the password in it unless told otherwise), with
        `search_path` set to `schema` when given."""
        auth = quote(self.user) + (":" + quote(self.password, safe="") if with_password else "")
        url = f"postgresql://{auth}@{self.host}:{self.port}/{quote(database)}"
        if schema is not None:
            url += "?options=" + quote(f"-c search_path={schema}", safe="")
        return url

    def _initdb(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o644)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                  "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8", "--no-sync",
                  "--locale=C", timeout=120)
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'", "max_connections": "300",
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "32MB", "logging_collector": "off", "log_checkpoints": "off",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S),
                  "-D", str(self.data), "-l", str(self.logfile), timeout=START_TIMEOUT_S + 10)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data))

    def restart(self) -> None:
        """Stop (cutting every session) and start again on the same port."""
        self.stop()
        self.start()

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE), as the superuser."""
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t{os.getpid()}_{next(_databases)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def fresh_dsn(self) -> str:
        """The URL of a new, empty schema in the session database (see the module docstring)."""
        if self._session_db is None:
            self._session_db = self.create_database()
        schema = f"s{next(_databases)}"
        self.execute(f"CREATE SCHEMA {schema}", self._session_db)
        return self.dsn(self._session_db, schema=schema)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_postgres(base_dir: pathlib.Path) -> Postgres:
    """Create and start a cluster in a new directory under `base_dir` (must be traversable)."""
    bin_dir = find_bin_dir()
    prefix = _as_server_user()
    dir = pathlib.Path(tempfile.mkdtemp(prefix=f"pg{next(_instances)}-", dir=base_dir))
    os.chmod(dir, 0o755)
    if prefix:
        entry = pwd.getpwnam(RUN_USER)
        os.chown(dir, entry.pw_uid, entry.pw_gid)
    [port] = free_ports(1)
    instance = Postgres(dir, bin_dir, port, secrets.token_urlsafe(16))
    instance._initdb()
    instance.start()
    return instance


def postmaster_pid(data: pathlib.Path) -> int | None:
    """The pid of the postmaster running on `data`, or None (no pid file, or that pid is not a
    postgres on this directory any more)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if str(data).encode() in cmdline else None


def stop_stale_clusters(root: pathlib.Path) -> list[int]:
    """Stop (immediate shutdown, SIGKILL after `STOP_TIMEOUT_S`) the postmasters of the clusters
    under `root`, a directory whose test run is gone; returns their pids."""
    stopped = []
    for pid_file in root.glob("pg*-*/data/postmaster.pid"):
        pid = postmaster_pid(pid_file.parent)
        if pid is None:
            continue
        os.kill(pid, signal.SIGQUIT)      # immediate shutdown: the data is thrown away anyway
        data = pid_file.parent
        if not polling.poll(lambda data=data, pid=pid: postmaster_pid(data) != pid, STOP_TIMEOUT_S):
            os.kill(pid, signal.SIGKILL)
        stopped.append(pid)
    return stopped
