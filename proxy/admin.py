"""The admin endpoint (config `admin:`), for `mailproxy who|kick|reload` and `gateway
delete-account`: HTTP on its own address, and/or on a Unix socket.

Off unless configured. On `admin.address` every request needs `Authorization: Bearer TOKEN` (the
`admin.token` secret, compared in constant time); anything else is 401. On `admin.socket` no token
is asked: the socket file's mode (`admin.socket_mode`, 0600 by default: the proxy's own user) is
the access control, as for doveadm's socket. One request per connection, bounded in size and time
like the metrics listener (net/http.py). Answers are JSON:

    GET  /sessions            live sessions: listener, protocol, user, client, upstream, since,
                              bytes_in (from the client) and bytes_out (to it) so far
    POST /kick?user=U|ip=A    end the matching sessions (BYE / -ERR, then close): {"kicked": N}
    POST /reload              as SIGHUP: {"reloaded": true} or {"reloaded": false, "errors": [...]}

User names are shown in full: whoever holds the token is an operator.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import parse_qs, urlsplit

import trio

from . import logs
from .config import Admin, Secret
from .session.context import Session

MAX_HEAD = 8192
TIMEOUT = 10.0


class AdminApi(Protocol):
    """What the endpoint acts on: `LocalAdmin` in one process, the supervisor's view of every
    worker with `workers: N` (proxy/workers/)."""

    async def who(self) -> list[dict[str, Any]]: ...

    async def kick(self, user: str | None, ip: str | None) -> int: ...

    async def reload(self) -> list[str]: ...


class LocalAdmin:
    """The live sessions of this process and the reload of its app."""

    def __init__(self, sessions: Callable[[], Iterable[Session]], reload: Callable[[], list[str]]):
        self.sessions = sessions
        self._reload = reload

    def _live(self) -> list[Session]:
        """Sessions not already kicked: a kicked one lingers a moment (its BYE must reach the
        client) but is gone as far as the operator is concerned, and is not kicked twice."""
        return [s for s in self.sessions() if not s.kicked]

    async def reload(self) -> list[str]:
        return self._reload()

    async def who(self) -> list[dict[str, Any]]:
        return self.who_now()

    def who_now(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"listener": s.listener.name, "protocol": s.protocol, "user": s.user,
                 "client": s.client_ip, "upstream": s.upstream, "tls": s.tls,
                 "since": round(now - s.started, 3), "commands": s.commands,
                 "bytes_in": s.bytes_in, "bytes_out": s.bytes_out}
                for s in self._live()]

    async def kick(self, user: str | None, ip: str | None) -> int:
        return self.kick_now(user, ip)

    def kick_now(self, user: str | None, ip: str | None) -> int:
        kicked = 0
        for session in self._live():
            if (user is not None and session.user == user) or \
                    (ip is not None and session.client_ip == ip):
                session.kick()
                kicked += 1
        return kicked


async def serve_admin(admin: Admin, api: AdminApi, *,
                      task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """HTTP on `admin.address`, bearer token required; started() with the bound port."""
    if admin.address is None or admin.token is None:
        raise ValueError("admin.address and admin.token are not configured")
    listeners = await trio.open_tcp_listeners(admin.address.port, host=admin.address.host)
    port = listeners[0].socket.getsockname()[1]
    logs.event("admin_listening", host=admin.address.host, port=port)
    task_status.started(port)
    await trio.serve_listeners(partial(_connection, admin.token, api), listeners)


async def serve_admin_socket(admin: Admin, api: AdminApi, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """HTTP on the Unix socket `admin.socket` (mode `admin.socket_mode`), no token; the socket
    file is removed when this ends."""
    if admin.socket is None:
        raise ValueError("admin.socket is not configured")
    _remove_stale_socket(admin.socket)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(admin.socket))
        inode = os.stat(admin.socket).st_ino
        os.chmod(admin.socket, admin.mode)   # before listen(): until then every connect is refused
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    try:
        logs.event("admin_listening", socket=str(admin.socket), mode=admin.socket_mode)
        task_status.started()
        await trio.serve_listeners(partial(_connection, None, api), [listener])
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        _remove_own_socket(admin.socket, inode)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left behind by a process that is gone is removed; one a live process
    answers on is refused (in use)."""
    if not path.is_socket():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
    else:
        raise OSError(errno.EADDRINUSE, "address already in use")
    finally:
        probe.close()


def _remove_own_socket(path: Path, inode: int) -> None:
    """Remove the socket file unless it is no longer ours (a newer process bound the path)."""
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


async def _connection(token: Secret | None, api: AdminApi, stream: trio.abc.Stream) -> None:
    """One request; `token` is the bearer token to ask for, None on the Unix socket."""
    try:
        with trio.move_on_after(TIMEOUT):
            head = await _read_head(stream)
            if head is not None:
                status, body = await _answer(token, api, head)
                await stream.send_all(_response(status, body))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:  # a bug here must not end the admin listener, let alone the proxy
        logs.event("admin_internal_error", logging.ERROR, exc_info=True)
    finally:
        await trio.aclose_forcefully(stream)


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


async def _answer(token: Secret | None, api: AdminApi, head: bytes) -> tuple[int, Any]:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rpartition(" ")[0] or rest
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    given = headers.get("authorization", "").removeprefix("Bearer ").encode()
    if token is not None and not hmac.compare_digest(given, token.value):
        return 401, {"error": "missing or wrong bearer token"}
    url = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    if (method, url.path) == ("GET", "/sessions"):
        return 200, await api.who()
    if (method, url.path) == ("POST", "/kick"):
        if not (query.get("user") or query.get("ip")):
            return 400, {"error": "give user=USER or ip=ADDRESS"}
        kicked = await api.kick(query.get("user"), query.get("ip"))
        logs.event("admin_kick", user=logs.sanitize(query.get("user", "-")),
                   ip=logs.sanitize(query.get("ip", "-")), kicked=kicked)
        return 200, {"kicked": kicked}
    if (method, url.path) == ("POST", "/reload"):
        errors = await api.reload()
        return 200, {"reloaded": not errors, "errors": errors}
    return 404, {"error": f"no {method} {url.path}"}


def _response(status: int, body: Any) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
