"""The gateway's PostgreSQL server freezes (every one of its processes stopped with SIGSTOP,
as a paused VM or a stuck host would be): its kernel still acknowledges what the gateway sends,
so nothing on the connection ever fails and, without a bound of our own, a command waiting on
the store waits for good. With `gateway.store_query_timeout` the command is answered
`NO [UNAVAILABLE]` (RFC 5530) within the bound, the session lives on, and once the server
resumes (SIGCONT) the same session's commands work again, without restarting the gateway.

A cluster of its own, so that freezing it stops no other test's database."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal

import pytest
import trio

from support import polling
from support.postgres import postmaster_pid, start_postgres

from .conftest import GatewayHandle, message
from .test_condstore import Raw


def server_processes(data: pathlib.Path) -> list[int]:
    """The postmaster of the cluster at `data` and every process it started."""
    master = postmaster_pid(data)
    assert master is not None, "the test cluster is not running"
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(stat.parent.name))
    return [master, *children]


def logged_in(port: int, user: str, password: str) -> Raw | None:
    """A session past LOGIN (its socket timeout, 60 s, bounds a hang), or None when the LOGIN
    was refused (Raw asserts it OK)."""
    try:
        return Raw(port, user, password)
    except AssertionError:
        return None


def until_ok(client: Raw, command: str) -> tuple[list[bytes], bytes]:
    """`command` sent again until answered OK: its untagged lines and tagged line."""
    return polling.wait_for(lambda: (answer := client.cmd(command))[1].split()[1] == b"OK"
                            and answer, f"{command} answered OK")


@contextlib.contextmanager
def frozen(pids: list[int]):
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def test_frozen_database_server_answers_unavailable_then_recovers(dovecot, dovecot_root, tmp_path,
                                                                       nursery):
    try:
        server = start_postgres(dovecot_root)
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        user, password = dovecot.add_user()
        dovecot.deliver(user, message(0))
        gateway = GatewayHandle(dovecot, tmp_path, user, password, store=server.fresh_dsn(),
                                store_query_timeout="2s")
        await gateway.start(nursery)

        def scenario() -> tuple[bytes, bytes, list[bytes]]:
            # 2 s bounds every store call, not only the frozen one: on a loaded machine a call
            # before the freeze or after the resume may outlast it too and be answered NO
            # [UNAVAILABLE] (the bound doing its job). So those commands are repeated until OK;
            # only the one sent while the server is frozen is asserted on as it comes
            client = polling.wait_for(lambda: logged_in(gateway.port, user, password),
                                      "a LOGIN answered OK")
            until_ok(client, "SELECT INBOX")
            with frozen(server_processes(server.data)):
                during = client.cmd("STORE 1 +FLAGS (\\Flagged)")[1]
            after = until_ok(client, "STORE 1 +FLAGS (\\Flagged)")[1]
            flags = until_ok(client, "FETCH 1 FLAGS")[0]
            client.close()
            return during, after, flags

        during, after, flags = await trio.to_thread.run_sync(scenario)
        assert during.split(b" ", 1)[1].startswith(b"NO [UNAVAILABLE]"), during
        assert after.split(b" ", 1)[1].startswith(b"OK"), after
        assert flags == [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"]
        await gateway.stop()
    finally:
        server.stop()
