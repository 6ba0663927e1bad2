"""Shared fixtures: a real Dovecot upstream and the real proxy as a subprocess.

Fixtures:
    dovecot          session: one private Dovecot (tests/support/dovecot.py), stopped at session end.
    user             function: a fresh `(name, password)` on the session `dovecot`.
    dovecot_factory  function: `factory(tls=(cert, key), ssl_required=False) -> Dovecot` starts more
                     instances; all are stopped when the test ends.
    postgres         session: one private PostgreSQL cluster (tests/support/postgres.py), stopped at
                     session end.
    pg_dsn           function: the `postgresql://` URL (password included) of a fresh, empty
                     schema on the session `postgres` (deleted with the cluster).
    proxy_factory    function: `factory(config_dict, log_format="text") -> ProxyProcess` runs
                     `python -m proxy serve` (tests/support/proxyproc.py); all are stopped when the test
                     ends, and the test fails if a proxy log holds a Traceback, unless that proxy's
                     `allow_tracebacks` was set True.

A SIGTERM to pytest (a CI job cancelled, a timeout) ends the run as Ctrl-C does, so the session
teardowns still stop every private server; servers of a SIGKILL'd run are stopped by the next run
(`make_root()`).

Helpers: `from support.proxyproc import relay_config` and `from support.dovecot import start_dovecot`
(this file puts tests/ on sys.path). When a test fails, the tails of the logs of every Dovecot and
proxy it used are added to its report.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import sys
import threading

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from support.dovecot import Dovecot, DovecotError, make_root, start_dovecot  # noqa: E402
from support.postgres import Postgres, PostgresError, start_postgres  # noqa: E402
from support.proxyproc import ProxyProcess, traceback_report  # noqa: E402

# Hypothesis's own wall-clock checks (a 200 ms deadline per example, the too_slow health check)
# can fail a correct test on a loaded 2-core machine; tests bound work by counts, never by time
# (CONTRIBUTING.md: no wall-clock thresholds). A test's own @settings inherits this profile.
settings.register_profile("mailproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mailproxy")


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"pytest got signal {signum}: stopping, with teardowns")


def pytest_configure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


_LOG_SOURCES = pytest.StashKey[list]()
_LOG_TAIL_LINES = 80


def _remember(request: pytest.FixtureRequest, label: str, read) -> None:
    request.node.stash.setdefault(_LOG_SOURCES, []).append((label, read))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("call", "teardown"):
        for label, read in item.stash.get(_LOG_SOURCES, []):
            try:
                text = read()
            except Exception as exc:  # noqa: BLE001 - a report helper must not hide the real failure
                text = f"(could not read: {exc!r})"
            report.sections.append((label, "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])))


@pytest.fixture(scope="session")
def dovecot_root() -> pathlib.Path:
    """A private directory for Dovecot instances that Dovecot's unprivileged processes can traverse
    (pytest's tmp_path cannot be: /tmp/pytest-of-root is 0700). Removed at session end unless
    MAILPROXY_KEEP_TEST_DIRS is set. Roots left by killed runs are reaped when a new one is made."""
    root = make_root()
    yield root
    if not os.environ.get("MAILPROXY_KEEP_TEST_DIRS"):
        shutil.rmtree(root, ignore_errors=True)


def _start(base_dir: pathlib.Path, **kwargs) -> Dovecot:
    try:
        return start_dovecot(base_dir, **kwargs)
    except DovecotError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def dovecot(dovecot_root: pathlib.Path) -> Dovecot:
    instance = _start(dovecot_root)
    yield instance
    instance.stop()


@pytest.fixture(autouse=True)
def _report_session_dovecot_log(request: pytest.FixtureRequest) -> None:
    if "dovecot" in request.fixturenames:
        instance = request.getfixturevalue("dovecot")
        _remember(request, f"dovecot log ({instance.name}, tail)", instance.log)


@pytest.fixture(scope="session")
def postgres(dovecot_root: pathlib.Path) -> Postgres:
    try:
        instance = start_postgres(dovecot_root)
    except PostgresError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield instance
    instance.stop()


@pytest.fixture
def pg_dsn(request: pytest.FixtureRequest, postgres: Postgres) -> str:
    _remember(request, "postgres log (tail)", postgres.log)
    return postgres.fresh_dsn()


@pytest.fixture
def user(dovecot: Dovecot) -> tuple[str, str]:
    """A fresh `(name, password)` on the session `dovecot`."""
    return dovecot.add_user()


@pytest.fixture
def dovecot_factory(request: pytest.FixtureRequest, dovecot_root: pathlib.Path):
    started: list[Dovecot] = []

    def factory(**kwargs) -> Dovecot:
        base_dir = kwargs.pop("base_dir", dovecot_root)
        instance = _start(base_dir, **kwargs)
        started.append(instance)
        _remember(request, f"dovecot log ({instance.name}, tail)", instance.log)
        return instance

    yield factory
    for instance in started:
        instance.stop()


@pytest.fixture
def proxy_factory(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    started: list[ProxyProcess] = []

    def factory(config: dict, log_format: str = "text", **kwargs) -> ProxyProcess:
        proxy = ProxyProcess(config, tmp_path / f"proxy-{len(started) + 1}", log_format, **kwargs)
        started.append(proxy)
        _remember(request, f"proxy log (pid {proxy.pid}, tail)", proxy.logs)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()
    report = traceback_report(started)
    if report:
        pytest.fail(report, pytrace=False)
