"""The admin endpoint: HTTP on its own address (config `admin:`), for `mailproxy who|kick|reload`.

Off unless configured. Every request needs `Authorization: Bearer TOKEN` (the `admin.token`
secret, compared in constant time); anything else is 401. One request per connection, bounded in
size and time like the metrics listener (net/http.py). Answers are JSON:

    GET  /sessions            live sessions: listener, protocol, user, client, upstream, since
    POST /kick?user=U|ip=A    end the matching sessions (BYE / -ERR, then close): {"kicked": N}
    POST /reload              as SIGHUP: {"reloaded": true} or {"reloaded": false, "errors": [...]}

User names are shown in full: whoever holds the token is an operator.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from functools import partial
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import parse_qs, urlsplit

import trio

from . import logs
from .config import Admin
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
                 "since": round(now - s.started, 3), "commands": s.commands}
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
    listeners = await trio.open_tcp_listeners(admin.address.port, host=admin.address.host)
    port = listeners[0].socket.getsockname()[1]
    logs.event("admin_listening", host=admin.address.host, port=port)
    task_status.started(port)
    await trio.serve_listeners(partial(_connection, admin, api), listeners)


async def _connection(admin: Admin, api: AdminApi, stream: trio.abc.Stream) -> None:
    try:
        with trio.move_on_after(TIMEOUT):
            head = await _read_head(stream)
            if head is not None:
                status, body = await _answer(admin, api, head)
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


async def _answer(admin: Admin, api: AdminApi, head: bytes) -> tuple[int, Any]:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rpartition(" ")[0] or rest
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    given = headers.get("authorization", "").removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, admin.token.value):
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
