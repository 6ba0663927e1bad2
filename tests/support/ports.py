"""Free TCP ports for the servers the tests start (Dovecot, the proxy, PostgreSQL, slapd, nginx).

Theory of operation. A server started as a separate process is told its port in its config, so
the test picks one first and the server binds it a moment later (a second or more under load).
Picking by binding port 0 returns a port of the kernel's ephemeral range, and in that moment the
same port can be taken by (a) any outgoing connection's local port (connect(2) draws from the
same range, and the tests open thousands), (b) another pick of this run, or (c) a pick of another
test run on the same machine: the server then fails with "address already in use".

So ports come from below the ephemeral range (`ip_local_port_range`), where connect(2) never
goes, and in turn from one counter shared by every test run of this user on the machine (a file
in the temp directory, read and advanced under `flock`): a port is handed out again only after
every other port of the range has been, by any run. A port some server still holds is skipped
(the bind check), so long-lived servers are not a problem either.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import socket
import tempfile

__all__ = ["free_ports", "PORT_RANGE"]


def _port_range(ephemeral_low: int) -> range:
    """The ports below the kernel's ephemeral range (which starts at `ephemeral_low`): from
    12000, above the usual fixed services, or at least 4,000 ports when that range starts
    lower (a tuned machine), never under 1024 (empty when nothing is left below it)."""
    return range(max(1024, min(12000, ephemeral_low - 4000)), ephemeral_low)


def _ephemeral_low() -> int:
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_RANGE = _port_range(_ephemeral_low())
_COUNTER = pathlib.Path(tempfile.gettempdir()) / f"mailproxy-test-ports-{os.getuid()}"


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free on `host` and that no other pick of any test run on
    this machine returned recently (see the module docstring)."""
    fd = os.open(_COUNTER, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        start = int(raw) if raw.isdigit() else os.getpid()
        ports: list[int] = []
        offset = 0
        while len(ports) < count:
            if offset >= len(PORT_RANGE):
                raise OSError(f"no {count} free ports on {host} in {PORT_RANGE}")
            port = PORT_RANGE[(start + offset) % len(PORT_RANGE)]
            offset += 1
            if _bindable(host, port):
                ports.append(port)
        next_start = b"%d" % ((start + offset) % len(PORT_RANGE))
        os.ftruncate(fd, 0)
        os.pwrite(fd, next_start, 0)
    finally:
        os.close(fd)   # also releases the lock
    return ports
