"""A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`.

Theory of operation: a scraper or a kubelet probe sends one GET per connection and waits for the
answer, so the server reads one request head (request line and headers, at most MAX_HEAD bytes,
within READ_TIMEOUT), writes one response with `Connection: close` and closes. No keep-alive, no
request bodies, no chunked encoding: that is all this endpoint needs, and it is small enough to
read whole, so it is hand-written rather than built on h11 (one dependency less on a path that
only ever sees GET and HEAD).

Robustness: every connection is bounded in time (READ_TIMEOUT to read the head, WRITE_TIMEOUT to
write the answer) and in memory (MAX_HEAD). Oversized or malformed requests get a 4xx and the
connection is closed; network errors end that connection only, never the server. So do
unexpected exceptions (logged at ERROR): a bug in the observability listener must not take the
mail proxy down with it. Before closing,
the server stops writing and discards what the client still sends for a moment (LINGER_TIMEOUT),
so an unread request tail does not make the kernel reset the connection before the client has
read the reply.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

import trio
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from .. import logs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import Address


class Health(Protocol):
    """What `/readyz` reads (proxy.health.Health, a layer above)."""

    @property
    def not_ready_reason(self) -> str | None: ...

    @property
    def local_not_ready_reason(self) -> str | None: ...



class HasRegistry(Protocol):
    """What `/metrics` exposes (proxy.metrics.Metrics, or the workers' aggregate)."""

    @property
    def registry(self) -> CollectorRegistry: ...


Refresh = Callable[[], Awaitable[None]]

__all__ = ["serve_http", "MAX_HEAD", "READ_TIMEOUT"]

MAX_HEAD = 8192           # request line + headers
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
LINGER_TIMEOUT = 1.0
_LINGER_BYTES = 65536
_METHODS = (b"GET", b"HEAD")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def serve_http(address: Address, metrics: HasRegistry, health: Health, *,
                     refresh: Refresh | None = None,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `/metrics`, `/healthz` and `/readyz` on `address` until cancelled.

    Reports `started(port)` with the bound port (useful with port 0). When the host resolves to
    several addresses, all are bound and the first one's port is reported. `refresh`, when
    given, is awaited before each `/metrics` answer (within READ_TIMEOUT): the workers'
    supervisor collects their counts there.

    Raises:
        OSError: the address cannot be bound.
    """
    handler = partial(_handle_connection, metrics.registry, health, refresh)
    host = None if address.host in ("", "*") else address.host  # None: every interface
    listeners = await trio.open_tcp_listeners(address.port, host=host)
    port = listeners[0].socket.getsockname()[1]
    logs.event("http_listening", host=address.host, port=port)
    task_status.started(port)
    await trio.serve_listeners(handler, listeners)


async def _handle_connection(registry: CollectorRegistry, health: Health, refresh: Refresh | None,
                             stream: trio.abc.Stream) -> None:
    """Read one request, answer it, close. Network errors end this connection only."""
    try:
        response = None
        with trio.move_on_after(READ_TIMEOUT):
            response = await _read_and_answer(stream, registry, health, refresh)
        if response is not None:
            with trio.move_on_after(WRITE_TIMEOUT):
                await stream.send_all(response)
            with trio.move_on_after(LINGER_TIMEOUT):
                await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    except Exception:  # a bug here must not end the listener, let alone the proxy
        logs.event("http_internal_error", logging.ERROR, exc_info=True)
    finally:
        await trio.aclose_forcefully(stream)


async def _read_and_answer(stream: trio.abc.Stream, registry: CollectorRegistry,
                           health: Health, refresh: Refresh | None) -> bytes | None:
    """The response to send, or None when the client closed without sending a request."""
    try:
        head = await _read_head(stream)
        if head is None:
            return None
        method, path, accept = _parse_head(head)
    except _BadRequest as exc:
        return _response(exc.status, f"{exc}\n", _TEXT, include_body=True)
    if path == "/metrics" and refresh is not None:
        await refresh()
    status, body, content_type = _route(path, accept, registry, health)
    logs.event("http_request", logging.DEBUG, method=method, path=logs.sanitize(path, 80),
               status=status)
    return _response(status, body, content_type, include_body=method == "GET")


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """Bytes up to the blank line ending the headers; None if the client sent nothing.

    Raises:
        _BadRequest: the head exceeds MAX_HEAD, or the client stopped sending mid-request.
    """
    data = b""
    while True:
        end = _head_end(data)
        if end is not None:
            return data[:end]
        if len(data) > MAX_HEAD:
            raise _BadRequest(431, "request too large")
        chunk = await stream.receive_some(MAX_HEAD + 1 - len(data))
        if not chunk:
            if data:
                raise _BadRequest(400, "incomplete request")
            return None
        data += chunk


def _head_end(data: bytes) -> int | None:
    """Offset of the blank line ending the head, if it is within MAX_HEAD bytes."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i != -1]
    return min(ends) if ends and min(ends) <= MAX_HEAD else None


def _parse_head(head: bytes) -> tuple[str, str, str]:
    """(method, path, Accept header) from a request head.

    Raises:
        _BadRequest: 400 for a malformed request line or header, 405 for a method other than
            GET or HEAD.
    """
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha():
        raise _BadRequest(400, "bad request line")
    method, target = parts[0], parts[1]
    if method not in _METHODS:
        raise _BadRequest(405, "method not allowed")
    if b"://" in target and not target.startswith(b"/"):   # absolute-form (RFC 9112 3.2.2)
        target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
    if not target.startswith(b"/"):
        raise _BadRequest(400, "bad request target")
    accept = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "bad header line")
        if name.lower() == b"accept":
            accept.append(value.strip().decode("latin-1"))
    path = target.split(b"?", 1)[0].decode("latin-1")
    return method.decode("ascii"), path, ", ".join(accept)


def _route(path: str, accept: str, registry: CollectorRegistry,
           health: Health) -> tuple[int, bytes | str, str]:
    """(status, body, content type) for a GET of `path`."""
    if path == "/metrics":
        return _metrics(registry, accept)
    if path == "/healthz":
        return 200, "ok\n", _TEXT
    if path in ("/readyz", "/readyz/local"):
        reason = health.not_ready_reason if path == "/readyz" else health.local_not_ready_reason
        return (200, "ready\n", _TEXT) if reason is None else (503, f"{reason}\n", _TEXT)
    return 404, "not found\n", _TEXT


def _metrics(registry: CollectorRegistry, accept: str) -> tuple[int, bytes | str, str]:
    encoder: Callable[[CollectorRegistry], bytes]
    try:
        encoder, content_type = choose_encoder(accept)
    except Exception:  # noqa: BLE001 - it parses client text (`version=x.y` raises TypeError)
        encoder, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    try:
        return 200, encoder(registry), content_type
    except Exception:  # a broken collector must not take the metrics listener down
        logs.event("metrics_collect_failed", logging.ERROR, exc_info=True)
        return 500, "internal error\n", _TEXT


def _response(status: int, content: bytes | str, content_type: str, *,
              include_body: bool) -> bytes:
    """A complete HTTP/1.1 response; HEAD gets the same headers without the body."""
    if isinstance(content, str):
        content = content.encode()
    head = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Type: {content_type}",
            f"Content-Length: {len(content)}", "Connection: close"]
    if status == 405:
        head.append("Allow: GET, HEAD")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return data + content if include_body else data


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then discard what the client still sends, until it closes or a cap is hit."""
    if isinstance(stream, trio.SocketStream):
        await stream.send_eof()
    received = 0
    while received < _LINGER_BYTES:
        chunk = await stream.receive_some(16384)
        if not chunk:
            return
        received += len(chunk)
