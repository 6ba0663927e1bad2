"""What a lookup is asked and what it may answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LoginQuery:
    """One login attempt, as a lookup sees it (nginx's auth_http request fields)."""

    protocol: str           # imap | pop3
    user: str
    password: bytes
    method: str             # nginx Auth-Method: "plain" for LOGIN, PLAIN and USER/PASS
    attempt: int            # 1 for the connection's first login (Auth-Login-Attempt)
    client_ip: str
    client_host: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"LoginQuery({self.protocol}, user={self.user!r}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class Target:
    """Log in there. `upstream` names a configured upstream; `host`/`port`, when set, replace
    its address (a host the directory named). `user`/`password`, when set, replace the
    client's credentials upstream (nginx Auth-User / Auth-Pass)."""

    upstream: str | None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: bytes | None = None

    def __repr__(self) -> str:
        return (f"Target(upstream={self.upstream!r}, host={self.host!r}, port={self.port!r}, "
                f"user={self.user!r})")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Refuse the login with `message` (client-visible, already sanitised). `wait`: answer after
    that many seconds and let the client try again (nginx Auth-Wait); None: answer, then close.
    `temporary`: a tempfail ([UNAVAILABLE] / [SYS/TEMP]) rather than wrong credentials."""

    message: str
    wait: float | None = None
    temporary: bool = False


Answer = Target | Refusal


class LookupUnavailable(Exception):
    """The lookup could not be asked (down, timed out, nonsense reply). `detail` is log-safe;
    the client gets a tempfail."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Lookup(Protocol):
    name: str
    kind: str   # a metrics.LOOKUP_KINDS label

    async def ask(self, query: LoginQuery) -> Answer | None:
        """The answer, or None when this lookup knows nothing of the user. Raises
        LookupUnavailable."""
        ...

    async def aclose(self) -> None:
        ...
