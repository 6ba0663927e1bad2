"""Fixtures for the store and fetcher tests.

    store_url   function, parametrized: where a fresh store lives, once as an SQLite file path and
                once as a `postgresql://` URL of a fresh database on the session's private
                PostgreSQL cluster (tests/support/postgres.py). Every test that uses it runs on
                both implementations of the `Store` protocol.
    store       function: that store, opened (no key ring), closed after the test.
"""

from __future__ import annotations

import pytest

from proxy.store import open_store

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_dsn")
    return str(tmp_path / "store.db")


@pytest.fixture
async def store(store_url):
    s = await open_store(store_url)
    yield s
    await s.close()
