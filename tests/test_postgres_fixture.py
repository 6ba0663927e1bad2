"""The private PostgreSQL cluster the store tests run on (tests/support/postgres.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys

import psycopg
import pytest

from support.dovecot import make_root
from support.polling import wait_for
from support.postgres import MISSING_MESSAGE, PostgresError, find_bin_dir, postmaster_pid

TESTS = pathlib.Path(__file__).resolve().parent
# A test run that starts a cluster, says where, and waits to be killed.
_RUN_THAT_WAITS = """
import os, pathlib, threading

def test_wait_to_be_killed(postgres):
    pathlib.Path(os.environ["PG_DATA_OUT"]).write_text(str(postgres.data))
    threading.Event().wait(300)
"""


def test_missing_binaries_fail_with_what_to_install(tmp_path):
    with pytest.raises(PostgresError) as info:
        find_bin_dir(str(tmp_path / "*" / "bin"))
    assert str(info.value) == MISSING_MESSAGE
    assert "install Debian's `postgresql` package" in MISSING_MESSAGE


def test_binaries_are_installed():
    bin_dir = find_bin_dir()
    assert (bin_dir / "initdb").exists() and (bin_dir / "pg_ctl").exists()


def test_each_test_gets_a_fresh_empty_schema(postgres, pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                              (schema,)).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE marker(x int)")
    with psycopg.connect(postgres.fresh_dsn()) as conn:
        assert conn.execute("SELECT to_regclass('marker')").fetchone() == (None,)
    other = postgres.create_database()
    with psycopg.connect(postgres.dsn(other)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (other,)


def test_password_is_required(postgres, pg_dsn):
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(postgres.dsn(with_password=False) + "?password=wrong", connect_timeout=5)
    assert "password authentication failed" in str(info.value)


def _start_waiting_run(tmp_path: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
    """pytest (with tests/conftest.py as a plugin) in a subprocess, holding a cluster open;
    returns it with its cluster's data directory once that is up."""
    (tmp_path / "test_waits.py").write_text(_RUN_THAT_WAITS)
    out = tmp_path / "data-dir"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PG_DATA_OUT": str(out)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "conftest", str(tmp_path / "test_waits.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: out.exists() and out.read_text(), "the cluster of the inner run",
                 timeout=120)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[0].decode(errors="replace")) from None
    data = pathlib.Path(out.read_text())
    assert postmaster_pid(data) is not None
    return proc, data


def test_a_terminated_run_stops_its_cluster(tmp_path):
    """SIGTERM to pytest (a cancelled CI job) runs the teardowns: no postmaster is left."""
    proc, data = _start_waiting_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 2, output               # pytest's "interrupted"
    assert postmaster_pid(data) is None, output
    assert not data.parent.parent.exists(), output    # the run's root is removed too


def test_the_cluster_of_a_killed_run_is_stopped_by_the_next_run(tmp_path):
    """SIGKILL leaves the postmaster running; the next run's make_root() stops it and removes
    the dead run's directory."""
    proc, data = _start_waiting_run(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    pid = postmaster_pid(data)
    assert pid is not None                            # orphaned, still running
    root = make_root()
    shutil.rmtree(root)
    assert postmaster_pid(data) is None
    assert not data.parent.parent.exists()
