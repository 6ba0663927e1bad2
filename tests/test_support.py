"""The test machinery itself: ProxyProcess readiness and failure reporting, the private-daemon
helper (support/daemon.py), traceback detection in the
proxy_factory fixture, and relay_config producing a config the proxy's own loader accepts. Uses small
fake commands instead of the real proxy so it does not depend on `serve`."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import trio
import trio.lowlevel

from support import polling, ports
from support.daemon import Foreground, accepts, greets, wait_ready
from support.polling import wait_for, wait_until
from support.proxyproc import ProxyProcess, ProxyStartError, relay_config, traceback_report

TESTS_DIR = pathlib.Path(__file__).resolve().parent


def fake(script: str) -> list[str]:
    """A fake proxy: argv[-1] is the config path, like the real `serve --config FILE`."""
    return [sys.executable, "-c", textwrap.dedent(script), "--config"]


READY_TEXT = """
import sys, time, yaml
config = yaml.safe_load(open(sys.argv[-1]))
print("2024-01-01T00:00:00.000Z INFO event=ready listeners=%d" % len(config["listeners"]), flush=True)
time.sleep(60)
"""


def _config() -> dict:
    return {"listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1:0"},
                          {"name": "fixed", "protocol": "pop3", "address": "127.0.0.1:1110"}],
            "metrics": {"address": "127.0.0.1:0"}}


def _with_config(command: list[str], proc_dir: pathlib.Path) -> list[str]:
    return [*command, str(proc_dir / "mailproxy.yaml")]


def test_ready_ports_and_stop(tmp_path):
    proxy = ProxyProcess(_config(), tmp_path, command=_with_config(fake(READY_TEXT), tmp_path))
    try:
        assert 0 < proxy.port("imap") < 65536 and proxy.port("imap") != 1110
        assert proxy.port("fixed") == 1110
        assert proxy.metrics_port and proxy.metrics_port != proxy.port("imap")
        written = proxy.config_path.read_text()
        assert f"127.0.0.1:{proxy.port('imap')}" in written
        assert f"127.0.0.1:{proxy.metrics_port}" in written
        assert "event=ready listeners=2" in proxy.logs()
        assert proxy.pid > 0
    finally:
        code = proxy.stop()
    assert code == -signal.SIGTERM   # ended by the SIGTERM, not by the SIGKILL that follows a timeout


def test_default_command_is_the_real_proxy(tmp_path):
    """Without `command`, the real CLI is run with the agreed arguments (whatever it then does)."""
    try:
        ProxyProcess({"listeners": []}, tmp_path, "json", ready_timeout=10)
    except ProxyStartError as exc:
        assert "-m', 'proxy', '--log-format', 'json', '--log-level', 'DEBUG', 'serve', '--config'" in str(exc)
    else:  # pragma: no cover - the real proxy would have to accept an empty config
        pytest.fail("an empty config became ready")


def test_json_ready(tmp_path):
    script = """
    import json, time
    print(json.dumps({"ts": "x", "level": "INFO", "event": "listening"}), flush=True)
    print(json.dumps({"ts": "x", "level": "INFO", "event": "ready"}), flush=True)
    time.sleep(60)
    """
    with ProxyProcess(_config(), tmp_path, "json", command=_with_config(fake(script), tmp_path)) as proxy:
        assert json.loads(proxy.logs().splitlines()[-1])["event"] == "ready"


def test_text_ready_is_not_json_ready(tmp_path):
    with pytest.raises(ProxyStartError, match="not ready after 1s"):
        ProxyProcess(_config(), tmp_path, "json", ready_timeout=1,
                     command=_with_config(fake(READY_TEXT), tmp_path))


def test_never_ready_fails_clearly_and_is_killed(tmp_path):
    script = """
    import os, time
    print("event=starting pid=" + str(os.getpid()), flush=True)
    time.sleep(60)
    """
    started = time.monotonic()
    with pytest.raises(ProxyStartError) as info:
        ProxyProcess(_config(), tmp_path, ready_timeout=1, command=_with_config(fake(script), tmp_path))
    assert time.monotonic() - started < 30   # killed, not waited for (it sleeps 60 s)
    message = str(info.value)
    assert "not ready after 1s" in message and "event=starting" in message
    pid = int(re.search(r"event=starting pid=(\d+)", message).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_early_exit_fails_with_code_and_log(tmp_path):
    script = """
    import sys
    print("config.yaml: listeners.0.address (line 3): bad address", file=sys.stderr)
    sys.exit(1)
    """
    with pytest.raises(ProxyStartError, match=r"(?s)exited with 1.*bad address"):
        ProxyProcess(_config(), tmp_path, command=_with_config(fake(script), tmp_path))


def test_signal_and_wait(tmp_path):
    script = """
    import signal, sys, time
    signal.signal(signal.SIGHUP, lambda *a: print("event=reloaded", flush=True))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("event=ready", flush=True)
    while True:
        time.sleep(0.01)
    """
    proxy = ProxyProcess(_config(), tmp_path, command=_with_config(fake(script), tmp_path))
    proxy.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "event=reloaded" not in proxy.logs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "event=reloaded" in proxy.logs()
    with pytest.raises(subprocess.TimeoutExpired):
        proxy.wait(0.1)
    assert proxy.stop() == 0


def test_traceback_report(tmp_path):
    script = """
    import time
    print("event=ready", flush=True)
    try:
        1 / 0
    except ZeroDivisionError:
        import traceback; traceback.print_exc()
    time.sleep(60)
    """
    with ProxyProcess(_config(), tmp_path, command=_with_config(fake(script), tmp_path)) as proxy:
        deadline = time.monotonic() + 5
        while "ZeroDivisionError" not in proxy.logs() and time.monotonic() < deadline:
            time.sleep(0.01)
        report = traceback_report([proxy])
        assert report and "ZeroDivisionError" in report and str(proxy.log_path) in report
        proxy.allow_tracebacks = True
        assert traceback_report([proxy]) is None


def test_proxy_factory_fails_test_on_traceback(tmp_path):
    """Run a tiny pytest session with our conftest as a plugin: the traceback test must fail at
    teardown, the one that allows tracebacks must pass."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import sys, textwrap
        SCRIPT = textwrap.dedent('''
            import time
            print("event=ready", flush=True)
            print("Traceback (most recent call last):", flush=True)
            print("ValueError: boom", flush=True)
            time.sleep(60)
        ''')

        def run(proxy_factory, tmp_path, allow):
            # the factory writes the config into tmp_path / "proxy-1"
            command = [sys.executable, "-c", SCRIPT, "--config", str(tmp_path / "proxy-1" / "mailproxy.yaml")]
            proxy = proxy_factory({"listeners": []}, command=command)
            proxy.allow_tracebacks = allow

        def test_unexpected(proxy_factory, tmp_path):
            run(proxy_factory, tmp_path, False)

        def test_expected(proxy_factory, tmp_path):
            run(proxy_factory, tmp_path, True)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "2 passed, 1 error" in out, out  # a teardown error is reported beside the test's pass
    assert "ERROR at teardown of test_unexpected" in out, out
    assert "proxy log holds a Traceback" in out and "ValueError: boom" in out, out


class _FakeDovecot:
    host = "127.0.0.1"
    imap_port = 10143
    pop3_port = 10110


def test_relay_config_is_valid():
    import yaml

    from proxy import config as config_mod

    cfg = relay_config(_FakeDovecot(), imap={"timeouts": {"idle": "31m"}}, max_connections_per_ip=5)
    assert [(lst["name"], lst["protocol"], lst["address"]) for lst in cfg["listeners"]] == [
        ("imap", "imap", "127.0.0.1:0"), ("pop3", "pop3", "127.0.0.1:0")]
    assert all(lst["max_connections_per_ip"] == 5 for lst in cfg["listeners"])
    assert "timeouts" in cfg["listeners"][0] and "timeouts" not in cfg["listeners"][1]
    loaded = config_mod.loads(yaml.safe_dump(cfg))
    assert loaded.route("anyone@example.com") == "main"
    assert loaded.upstreams["main"].imap.port == 10143
    only_pop3 = relay_config(_FakeDovecot(), listeners=("pop3",))
    assert [lst["name"] for lst in only_pop3["listeners"]] == ["pop3"]
    config_mod.loads(yaml.safe_dump(only_pop3))


def test_wait_for_returns_the_value_once_true() -> None:
    calls = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(calls), "the fourth call", interval=0) == "ready"


def test_wait_for_names_what_never_happened(monkeypatch) -> None:
    monkeypatch.setattr(polling, "TIMEOUT", 0.0)
    with pytest.raises(AssertionError, match=r"^timed out after 0.0 s waiting for the moon$"):
        wait_for(lambda: False, "the moon", timeout=0.0, interval=0)


async def test_wait_until_polls_while_other_tasks_run() -> None:
    flag: list[bool] = []

    async def setter() -> None:
        await trio.lowlevel.checkpoint()   # lets wait_until poll once first
        flag.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(setter)
        assert await wait_until(lambda: flag, "the flag", interval=0) == [True]


async def test_wait_until_names_what_never_happened(monkeypatch) -> None:
    monkeypatch.setattr(polling, "TIMEOUT", 0.0)
    with pytest.raises(AssertionError, match=r"^timed out after 0.0 s waiting for the sun$"):
        await wait_until(lambda: False, "the sun", interval=0)


def test_private_daemon_exiting_during_start_is_reported_with_its_output(tmp_path):
    server = Foreground("broken", ["sh", "-c", "echo bad config line 3; exit 3"], tmp_path)
    with pytest.raises(AssertionError) as caught:
        server.wait_ready({"port 1": accepts(1)})
    assert str(caught.value) == "broken exited during start\nbad config line 3\n"
    assert server.stop() == 3


def test_private_daemon_never_ready_names_what_did_not_answer(tmp_path):
    server = Foreground("sleeper", ["sleep", "60"], tmp_path)
    with pytest.raises(AssertionError) as caught:
        wait_ready("sleeper", {"IMAP port 1": greets(1, b"* OK"), "port 2": accepts(2)},
                   alive=server.alive, log=lambda: "the log", timeout=1)
    assert str(caught.value) == "sleeper not ready after 1s: no answer on IMAP port 1, port 2\nthe log"
    assert server.stop() == -15   # SIGTERM


def test_free_ports_are_distinct_below_the_ephemeral_range_and_never_handed_out_twice():
    """support/ports.py: ports come from below ip_local_port_range (where connect(2) never
    takes them), one machine-wide counter hands each out once per cycle of the range (so no
    two picks, of this run or of another, return the same port meanwhile), and a port some
    socket holds is skipped."""
    ephemeral_low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first = ports.free_ports(3)
    assert len(set(first)) == 3 and all(p in ports.PORT_RANGE and p < ephemeral_low for p in first)
    with socket.socket() as held:   # the next port the counter would hand out, taken meanwhile
        at = ports.PORT_RANGE.index(first[-1]) + 1
        taken = ports.PORT_RANGE[at % len(ports.PORT_RANGE)]
        held.bind(("127.0.0.1", taken))
        second = ports.free_ports(5)
    assert taken not in second
    assert not set(first) & set(second) and len(set(second)) == 5


def test_free_ports_stay_below_an_ephemeral_range_that_starts_low():
    """A machine whose ip_local_port_range starts below 16000 (or 12000): the ports still
    all lie below it (they used to be 12000-15999 whatever it was, where connect(2) takes
    local ports too), and a range starting at 1024 leaves none rather than wrong ones."""
    assert ports._port_range(32768) == range(12000, 32768)
    assert ports._port_range(15000) == range(11000, 15000)
    assert ports._port_range(10000) == range(6000, 10000)
    assert ports._port_range(3000) == range(1024, 3000)
    assert ports._port_range(1024) == range(1024, 1024)
