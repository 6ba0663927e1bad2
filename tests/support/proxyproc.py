"""The real proxy as a subprocess: `python -m proxy serve --config FILE`, as an operator runs it.

`ProxyProcess(config, tmp_path)` writes `config` (a dict in the YAML schema of config/mailproxy.yaml) to
`tmp_path/mailproxy.yaml`, after replacing every listener `address` and `metrics.address` that ends in
`:0` with a port from `support.ports.free_ports` (free, and handed out to no other pick of any
test run on the machine lately), starts the proxy with its stdout and stderr in
`tmp_path/proxy.log`, and returns once a log line says `event=ready` (text) or `"event": "ready"`
(json). If the process exits first, or is not ready within `READY_TIMEOUT`, it is killed and
`ProxyStartError` (an AssertionError) carries the log tail.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from typing import Any, Iterable

import yaml

from . import polling
from .dovecot import free_ports

__all__ = ["ProxyProcess", "ProxyStartError", "relay_config", "traceback_report", "REPO_ROOT",
           "READY_TIMEOUT"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0   # a bound only a broken build reaches, even at load 20 on 2 cores
STOP_TIMEOUT = 10.0
_TEXT_READY = re.compile(r"(^|\s)event=ready(\s|$)", re.MULTILINE)


class ProxyStartError(AssertionError):
    """The proxy exited or did not log `ready` in time; the message has the log tail."""


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _split_address(address: str) -> tuple[str, str]:
    host, _, port = str(address).rpartition(":")
    return host, port


class ProxyProcess:
    """A running `python -m proxy serve`. See the module docstring.

    Attributes:
        config: the config as written, with the ports filled in.
        config_path, log_path: the files in `tmp_path`.
        allow_tracebacks: set True in a test that expects a Traceback in the log; otherwise the
            `proxy_factory` fixture fails the test when the log has one.
    """

    def __init__(self, config: dict[str, Any], tmp_path: pathlib.Path, log_format: str = "text", *,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None,
                 ready_timeout: float = READY_TIMEOUT, command: list[str] | None = None):
        if log_format not in ("text", "json"):
            raise ValueError("log_format is 'text' or 'json'")
        self.log_format = log_format
        self.allow_tracebacks = False
        self.tmp_path = pathlib.Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.config = copy.deepcopy(config)
        self._ports: dict[str, int] = {}
        self.metrics_port: int | None = None
        self._assign_ports()
        self.config_path = self.tmp_path / "mailproxy.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.log_path = self.tmp_path / "proxy.log"
        if command is None:  # `command` lets the fixture machinery be tested without the real proxy
            command = [sys.executable, "-m", "proxy", "--log-format", log_format, "--log-level", "DEBUG",
                       *extra_args, "serve", "--config", str(self.config_path)]
        self.command = command
        run_env = dict(os.environ if env is None else env)
        run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), run_env.get("PYTHONPATH")]))
        run_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(command, cwd=self.tmp_path, env=run_env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self._kill()
            raise

    def __repr__(self) -> str:
        return f"<ProxyProcess pid={self.pid} ports={self._ports} metrics={self.metrics_port}>"

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _assign_ports(self) -> None:
        """Fill in every `host:0` address, all of a host's at once so that the listeners and the
        metrics endpoint get distinct ports (separate picks can return the same freed port)."""
        listeners = [listener for listener in self.config.get("listeners") or ()
                     if isinstance(listener, dict) and "address" in listener]
        metrics = self.config.get("metrics")
        places = listeners + ([metrics] if isinstance(metrics, dict) and "address" in metrics else [])
        admin = self.config.get("admin")
        others = [admin] if isinstance(admin, dict) and "address" in admin else []
        unassigned: dict[str, list[dict[str, Any]]] = {}
        taken: set[int] = set()   # ports the test picked itself (e.g. the admin's): freed too
        for place in places + others:
            host, port = _split_address(place["address"])
            if port == "0":
                unassigned.setdefault(host, []).append(place)
            else:
                taken.add(int(port))
        for host, group in unassigned.items():
            free = [port for port in free_ports(len(group) + len(taken), host.strip("[]"))
                    if port not in taken]
            for place, port in zip(group, free, strict=False):
                place["address"] = f"{host}:{port}"
        for listener in listeners:
            port = int(_split_address(listener["address"])[1])
            self._ports[listener.get("name", str(len(self._ports)))] = port
        if metrics is not None and metrics in places:
            self.metrics_port = int(_split_address(metrics["address"])[1])

    def _is_ready(self, text: str) -> bool:
        if self.log_format == "text":
            return _TEXT_READY.search(text) is not None
        for line in text.splitlines():
            if '"event": "ready"' in line:
                try:
                    if json.loads(line).get("event") == "ready":
                        return True
                except (ValueError, AttributeError):
                    continue
        return False

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self._is_ready(self.logs()):
                return True
            code = self._proc.poll()
            if code is not None and not self._is_ready(self.logs()):
                raise ProxyStartError(f"proxy exited with {code} before it was ready: {self.command}\n"
                                      f"--- {self.log_path} (tail) ---\n{_tail(self.logs())}")
            return code is not None

        if not polling.poll(ready, timeout):
            raise ProxyStartError(f"proxy not ready after {timeout:.0f}s (no 'ready' event): "
                                  f"{self.command}\n--- {self.log_path} (tail) ---\n{_tail(self.logs())}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def port(self, listener_name: str) -> int:
        """The TCP port of the listener called `listener_name`."""
        return self._ports[listener_name]

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the exit code; raises subprocess.TimeoutExpired."""
        return self._proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit code (negative: killed by signal)."""
        if self._proc.poll() is None:
            try:
                self._proc.send_signal(signal.SIGTERM)
                return self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        return self._kill()

    def _kill(self) -> int:
        if self._proc.poll() is None:
            self._proc.kill()
        return self._proc.wait()

    def tracebacks(self) -> bool:
        return "Traceback" in self.logs()


def relay_config(dovecot: Any, *, listeners: Iterable[str] = ("imap", "pop3"),
                 **listener_overrides: Any) -> dict[str, Any]:
    """A relay config in front of `dovecot`: listeners "imap" and/or "pop3" on 127.0.0.1:0, one upstream
    "main" with the Dovecot's plain IMAP and POP3 ports, route "*" -> main, metrics on 127.0.0.1:0.

    `listener_overrides`: a keyword named after a listener with a dict value is merged into that
    listener only (`imap={"tls": "starttls", "certificates": [...]}`); any other keyword is set on
    every listener (`allow_plaintext_auth=True`). Change the returned dict freely for anything else.
    """
    names = tuple(listeners)
    unknown = [n for n in names if n not in ("imap", "pop3")]
    if unknown:
        raise ValueError(f"relay_config knows listeners 'imap' and 'pop3', not {unknown}")
    per_listener = {k: v for k, v in listener_overrides.items() if k in names and isinstance(v, dict)}
    common = {k: v for k, v in listener_overrides.items() if k not in per_listener}
    built = []
    for name in names:
        listener: dict[str, Any] = {"name": name, "protocol": name, "mode": "relay",
                                    "address": "127.0.0.1:0", "tls": "none"}
        listener.update(copy.deepcopy(common))
        listener.update(copy.deepcopy(per_listener.get(name, {})))
        built.append(listener)
    return {
        "listeners": built,
        "upstreams": {"main": {
            "host": dovecot.host,
            "imap": {"port": dovecot.imap_port, "tls": "none"},
            "pop3": {"port": dovecot.pop3_port, "tls": "none"},
        }},
        "routes": [{"match": "*", "upstream": "main"}],
        "metrics": {"address": "127.0.0.1:0"},
        # the whole suite can run on either relay path: MAILPROXY_TEST_RELAY_ENGINE=epoll|tasks
        **({"relay": {"engine": engine}} if (engine := os.environ.get("MAILPROXY_TEST_RELAY_ENGINE"))
           else {}),
    }


def traceback_report(proxies: Iterable[ProxyProcess]) -> str | None:
    """A failure message naming each proxy whose log holds a Traceback (an unhandled exception is a
    defect), skipping those with `allow_tracebacks`; None when there is none."""
    parts = []
    for proxy in proxies:
        if proxy.allow_tracebacks:
            continue
        text = proxy.logs()
        index = text.find("Traceback")
        if index >= 0:
            start = text.rfind("\n", 0, max(0, index - 1)) + 1
            excerpt = "\n".join(text[start:].splitlines()[:60])
            parts.append(f"--- {proxy.log_path} (pid {proxy.pid}) ---\n{excerpt}")
    if not parts:
        return None
    return ("proxy log holds a Traceback (set proxy.allow_tracebacks = True if the test expects one):\n"
            + "\n".join(parts))
