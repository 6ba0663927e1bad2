"""What every private server the tests start has in common: start it, wait until it answers, stop it.

`Foreground(name, argv, directory)` runs a server that stays in the foreground (nginx `daemon
off`, `slapd -d 0`) in its own session, its stdout and stderr in `directory/NAME.out`; `stop()`
sends SIGTERM and, after `STOP_TIMEOUT`, SIGKILL. Dovecot's master puts itself in the
background and keeps its own start and stop (`dovecot stop`), sharing the wait; PostgreSQL's
`pg_ctl -w` does both and its own wait.

`wait_ready(name, probes, alive=..., log=...)` polls every probe (`greets(port, b"* OK")`,
`accepts(port)`) until each has answered once, bounded by `START_TIMEOUT`; it fails at once when
`alive()` turns false (the server exited during start) and, either way, the AssertionError says
which probes never answered and ends with the server's `log()`.
"""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence

from . import polling

START_TIMEOUT = 60.0   # seconds: a bound only a broken build reaches, even at load 20 on 2 cores
STOP_TIMEOUT = 10.0
INTERVAL = 0.05
HOST = "127.0.0.1"


def greets(port: int, prefix: bytes, host: str = HOST) -> Callable[[], bool]:
    """A probe: a connection to `port` is greeted with a line starting with `prefix`."""
    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                return sock.recv(512).startswith(prefix)
        except OSError:
            return False
    return probe


def accepts(port: int, host: str = HOST) -> Callable[[], bool]:
    """A probe: a TCP connection to `port` is accepted."""
    def probe() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False
    return probe


def wait_ready(name: str, probes: Mapping[str, Callable[[], bool]], *, alive: Callable[[], bool],
               log: Callable[[], str], timeout: float = START_TIMEOUT,
               error: type[Exception] = AssertionError) -> None:
    """Until every probe (by description) has answered once; see the module docstring."""
    pending = dict(probes)

    def all_answered() -> bool:
        nonlocal pending
        if not alive():
            raise error(f"{name} exited during start\n{log()}")
        pending = {what: probe for what, probe in pending.items() if not probe()}
        return not pending

    if not polling.poll(all_answered, timeout, interval=INTERVAL):
        raise error(f"{name} not ready after {timeout:.0f}s: no answer on "
                    f"{', '.join(pending)}\n{log()}")


class Foreground:
    """A private server process running in the foreground; see the module docstring."""

    def __init__(self, name: str, argv: Sequence[str], directory: pathlib.Path):
        self.name = name
        self.output_path = pathlib.Path(directory) / f"{name}.out"
        self._out = open(self.output_path, "wb")
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, probes: Mapping[str, Callable[[], bool]],
                   log: Callable[[], str] | None = None) -> None:
        """`wait_ready` for this process; stops it when it does not get ready."""
        try:
            wait_ready(self.name, probes, alive=self.alive, log=log or self.output)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode
