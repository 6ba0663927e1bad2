"""Module-scoped proxies for the relay integration tests (one proxy process per test module)."""

from __future__ import annotations

import pytest

from support.proxyproc import ProxyProcess, relay_config, traceback_report


@pytest.fixture(scope="module", params=["epoll", "tasks"])
def relay_proxy(request, dovecot, tmp_path_factory):
    """One proxy (IMAP and POP3 relay listeners, plaintext auth allowed) in front of the session
    Dovecot, shared by the tests of a module, once per relay path (`relay.engine`: the epoll
    engine, and the pump tasks that TLS sessions use). Fails the module if its log holds a
    traceback."""
    config = relay_config(dovecot, allow_plaintext_auth=True)
    config["relay"] = {"engine": request.param}
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("relay-proxy"))
    yield proxy
    proxy.stop()
    report = traceback_report([proxy])
    if report:
        pytest.fail(report, pytrace=False)
