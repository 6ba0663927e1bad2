"""The `http` lookup: nginx's mail `auth_http` protocol, so an existing nginx auth service works
unchanged (https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html, and nginx's
src/mail/ngx_mail_auth_http_module.c for what the page leaves out).

Theory of operation. Each login becomes `GET <url>` with the headers `Auth-Method` ("plain"),
`Auth-User` and `Auth-Pass` (escaped as nginx does: space, "%" and bytes 00-1F as %XX),
`Auth-Protocol` (imap | pop3), `Auth-Login-Attempt` (1, 2, ... within the connection),
`Client-IP`, `Client-Host` (only when known, as nginx does for IMAP/POP3) and the configured extra
headers (nginx's auth_http_header, e.g. a shared secret). The status line and the body are
ignored; the answer is in the headers, read as nginx reads them:

- `Auth-Status: OK` (or no Auth-Status at all) with `Auth-Server` (an IP address, never a name)
  and `Auth-Port`: log in there, as `Auth-User` / with `Auth-Pass` when given (rewriting);
  without a server or port the reply is unusable -> the client gets a tempfail.
- `Auth-Status: <any other text>`: refused; the text goes to the client (`tag NO text`,
  `-ERR text`, after our response code unless the text starts with its own `[CODE]`).
  With `Auth-Wait: N` the refusal is sent after N seconds and the client may try again;
  without it the connection is closed after the refusal. `Auth-Error-Code` is nginx's SMTP
  reply code; here a 4xx code marks the refusal temporary ([UNAVAILABLE] / [SYS/TEMP]).
- `Auth-Status: WAIT` with `Auth-Wait: N` (newer nginx): ask again after N seconds (at most
  `MAX_WAITS` times).

Our one extension: a 404 without any Auth-Status, Auth-Server or Auth-Port header means "not in
this directory", and the next lookup (then `routes:`) is tried. nginx would fail such a login.
The whole exchange is bounded by `timeout`; a service that is down, slow or answers nonsense
raises LookupUnavailable (the client gets `NO [UNAVAILABLE]` / `-ERR [SYS/TEMP]`, where nginx
says "internal server error" and closes).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import httpx
import trio

from .. import logs
from ..config import HttpLookup as HttpLookupConfig
from .answers import Answer, LoginQuery, LookupUnavailable, Refusal, Target

MAX_WAITS = 10             # `Auth-Status: WAIT` answers in a row before giving up
MAX_BODY = 65536           # bytes of an (ignored) reply body read to keep the connection
MAX_MESSAGE = 200          # characters of an Auth-Status text relayed to the client
_ESCAPE = {b: f"%{b:02X}".encode() for b in [*range(0x20), 0x20, 0x25]}
_DIGITS = re.compile(rb"^[0-9]+$")


def escape(value: bytes) -> bytes:
    """nginx's NGX_ESCAPE_MAIL_AUTH: space, "%" and 00-1F as %XX; other bytes (UTF-8) as is."""
    if not any(b in _ESCAPE for b in value):
        return value
    return b"".join(_ESCAPE.get(b, bytes((b,))) for b in value)


def request_headers(query: LoginQuery, extra: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    """The auth_http request headers for one login, in nginx's order."""
    headers = [
        (b"Auth-Method", query.method.encode()),
        (b"Auth-User", escape(query.user.encode())),
        (b"Auth-Pass", escape(query.password)),
        (b"Auth-Protocol", query.protocol.encode()),
        (b"Auth-Login-Attempt", str(query.attempt).encode()),
        (b"Client-IP", query.client_ip.encode()),
    ]
    if query.client_host:
        headers.append((b"Client-Host", escape(query.client_host.encode())))
    headers.extend((name.encode(), value) for name, value in extra.items())
    return headers


@dataclass(frozen=True, slots=True)
class WaitAndRetry:
    """`Auth-Status: WAIT`: ask again after `seconds`."""

    seconds: float


def _atoi(value: bytes) -> int | None:
    """nginx's ngx_atoi: digits only, else no value."""
    return int(value) if _DIGITS.match(value) else None


def _message(value: bytes) -> str:
    return logs.sanitize(value, MAX_MESSAGE)


def parse_reply(status_code: int, raw_headers: list[tuple[bytes, bytes]]
                ) -> Answer | WaitAndRetry | None:
    """An auth_http reply's headers -> the answer (see the module docstring). Header names are
    case-insensitive; of a repeated header the last one counts, as in nginx."""
    fields: dict[bytes, bytes] = {}
    for name, value in raw_headers:
        fields[name.lower()] = value.strip()
    status = fields.get(b"auth-status")
    wait = _atoi(fields.get(b"auth-wait", b""))
    if status is not None and status not in (b"OK", b"WAIT"):
        code = fields.get(b"auth-error-code", b"")
        return Refusal(_message(status) or "Authentication failed.",
                       wait=float(wait) if wait else None,
                       temporary=code[:1] == b"4")
    if status == b"WAIT":
        return WaitAndRetry(float(wait or 0))
    server, port = fields.get(b"auth-server"), fields.get(b"auth-port")
    if status is None and server is None and port is None and status_code == 404:
        return None
    if not server or not port:
        raise LookupUnavailable(f"HTTP {status_code} without Auth-Server or Auth-Port")
    try:
        host = str(ipaddress.ip_address(server.strip(b"[]").decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise LookupUnavailable(f"invalid Auth-Server {logs.sanitize(server, 60)}") from None
    number = _atoi(port)
    if number is None or not 1 <= number <= 65535:
        raise LookupUnavailable(f"invalid Auth-Port {logs.sanitize(port, 20)}")
    user = fields.get(b"auth-user")
    try:
        new_user = user.decode("utf-8") if user else None
    except UnicodeDecodeError:
        raise LookupUnavailable("Auth-User is not UTF-8") from None
    return Target(None, host=host, port=number, user=new_user, password=fields.get(b"auth-pass"))


async def _discard_body(response: httpx.Response) -> None:
    """Read (and drop) a small body so the connection can be reused; past MAX_BODY, stop and
    let the connection close."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen > MAX_BODY:
            return


class HttpLookup:
    """One `http:` entry of `lookups:`. Keeps an HTTP connection pool (httpx on trio)."""

    kind = "http"

    def __init__(self, settings: HttpLookupConfig):
        self.settings = settings
        self.name = settings.name
        self._extra = {name: value.encode() for name, value in settings.headers.items()}
        self._extra.update({name: secret.value for name, secret in settings.secret_headers.items()})
        # the timeout is ours (one trio cancel scope around the whole exchange), not httpx's
        self._client = httpx.AsyncClient(timeout=None, follow_redirects=False,
                                         trust_env=False)

    async def ask(self, query: LoginQuery) -> Answer | None:
        for _ in range(MAX_WAITS + 1):
            answer = await self._ask_once(query)
            if not isinstance(answer, WaitAndRetry):
                return answer
            await trio.sleep(answer.seconds)
        raise LookupUnavailable(f"Auth-Status: WAIT more than {MAX_WAITS} times")

    async def _ask_once(self, query: LoginQuery) -> Answer | WaitAndRetry | None:
        headers = request_headers(query, self._extra)
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                async with self._client.stream("GET", self.settings.url,
                                               headers=headers) as response:
                    status, raw = response.status_code, response.headers.raw
                    await _discard_body(response)
            except httpx.HTTPError as exc:
                raise LookupUnavailable(f"{type(exc).__name__}: {logs.sanitize(str(exc), 80)}"
                                        ) from None
        if scope.cancelled_caught:
            raise LookupUnavailable(f"no reply within {self.settings.timeout:g}s")
        return parse_reply(status, raw)

    async def aclose(self) -> None:
        await self._client.aclose()
