"""The private PostgreSQL cluster the store tests run on (tests/support/postgres.py)."""

from __future__ import annotations

import psycopg
import pytest

from support.postgres import MISSING_MESSAGE, PostgresError, find_bin_dir


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
