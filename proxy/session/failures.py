"""Why a session, or one attempt inside it, failed; and why a session ended.

`Failure` is the one vocabulary of things that go wrong with an upstream or a login (after
Dovecot's `login_proxy_failure_type`). Each member's row in `_TABLE` gives, in one place:

- `label`: the metric label (`reason` on mailproxy_upstream_errors_total and
  mailproxy_gateway_syncs_total; `Failure.labels()` is exactly that set);
- `level`: the log level of the line that reports it;
- `auth`: the `result` label of mailproxy_auth_attempts_total when it decides a login;
- the reply a client gets when it decides a login (`imap_reply`, `pop3_reply`).

Code that catches an error maps it to a `Failure` once, where it is caught (UpstreamError
carries one), and everything downstream reads the enum rather than the exception.

`Close` names why a session ended (the `reason` of its session_end log line); the members that
are a configured limit also name the `limit` label of mailproxy_limit_hits_total, so
`Session.close()` counts them without the call site picking a label.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

__all__ = ["Failure", "Close", "IMAP_TEMPFAIL_CODES", "LOG_LEVEL", "auth_result",
           "limit_of_protocol_error"]

# Upstream NO codes that mean "try again later", not "wrong password" (RFC 5530).
IMAP_TEMPFAIL_CODES = frozenset((b"UNAVAILABLE", b"SERVERBUG", b"LIMIT", b"INUSE",
                                 b"EXPUNGEISSUED"))


@dataclass(frozen=True)
class _Row:
    level: int
    auth: str                          # auth_attempts result when this failure decides a login
    imap_reply: tuple[bytes, bytes]    # (response code, text) of the tagged NO
    pop3_reply: tuple[bytes, bytes]    # (response code, text) of the -ERR


class Failure(enum.Enum):
    """A failure reason; the value is its metric label."""

    CONNECT = "connect"              # TCP connect to the upstream failed
    TLS = "tls"                      # a TLS handshake, certificate check or TLS file failed
    UPSTREAM = "upstream"            # the upstream broke the connection, refused, or cut a reply
    PROTOCOL = "protocol"            # a peer violated the protocol (unparseable input)
    AUTH_REJECTED = "auth_rejected"  # wrong credentials (the upstream said NO / -ERR, or no route)
    AUTH_TEMPFAIL = "auth_tempfail"  # cannot be decided now ([UNAVAILABLE], [SYS/TEMP])
    THROTTLED = "throttled"          # too many failed logins from this IP or for this user
    LIMIT = "limit"                  # a configured limit was hit (see metrics.LIMITS)
    TIMEOUT = "timeout"              # a connect, login, idle or upstream response timer expired
    INTERNAL = "internal"            # a bug, or a configuration that cannot work, on our side
    CLIENT_GONE = "client_gone"      # the client went away; nobody to reply to

    @property
    def label(self) -> str:
        """The metric label."""
        return self.value

    @property
    def level(self) -> int:
        return _TABLE[self].level

    @property
    def auth(self) -> str:
        """The mailproxy_auth_attempts_total `result` when this failure decides a login."""
        return _TABLE[self].auth

    @property
    def imap_reply(self) -> tuple[bytes, bytes]:
        return _TABLE[self].imap_reply

    @property
    def pop3_reply(self) -> tuple[bytes, bytes]:
        return _TABLE[self].pop3_reply

    @classmethod
    def labels(cls) -> frozenset[str]:
        return frozenset(failure.value for failure in cls)


# RFC 5530 (IMAP response codes) and RFC 3206 (POP3): AUTHENTICATIONFAILED / [AUTH] is a
# credentials problem, UNAVAILABLE / [SYS/TEMP] a temporary one worth retrying.
_REJECTED = ((b"AUTHENTICATIONFAILED", b"Authentication failed."),
             (b"AUTH", b"Authentication failed."))
_UNAVAILABLE = ((b"UNAVAILABLE", b"Server unavailable, try again later."),
                (b"SYS/TEMP", b"Server unavailable, try again later."))
_THROTTLED = ((b"UNAVAILABLE", b"Too many authentication failures, try again later."),
              (b"SYS/TEMP", b"Too many authentication failures, try again later."))
_W, _I, _E, _D = logging.WARNING, logging.INFO, logging.ERROR, logging.DEBUG

_TABLE: dict[Failure, _Row] = {
    Failure.CONNECT: _Row(_W, "tempfail", *_UNAVAILABLE),
    Failure.TLS: _Row(_W, "tempfail", *_UNAVAILABLE),
    Failure.UPSTREAM: _Row(_W, "tempfail", *_UNAVAILABLE),
    Failure.PROTOCOL: _Row(_I, "tempfail", *_UNAVAILABLE),
    Failure.AUTH_REJECTED: _Row(_I, "failure", *_REJECTED),
    Failure.AUTH_TEMPFAIL: _Row(_W, "tempfail", *_UNAVAILABLE),
    Failure.THROTTLED: _Row(_I, "throttled", *_THROTTLED),
    Failure.LIMIT: _Row(_I, "tempfail", *_UNAVAILABLE),
    Failure.TIMEOUT: _Row(_I, "tempfail", *_UNAVAILABLE),
    Failure.INTERNAL: _Row(_E, "tempfail", *_UNAVAILABLE),
    Failure.CLIENT_GONE: _Row(_D, "tempfail", *_UNAVAILABLE),
}

LOG_LEVEL: dict[Failure, int] = {failure: row.level for failure, row in _TABLE.items()}


def auth_result(outcome: Failure | None) -> str:
    """The auth_attempts `result` of a login: "success" (None) or the failure's."""
    return "success" if outcome is None else outcome.auth


class Close(enum.Enum):
    """Why a session ended: the value is the `reason` of its session_end log line."""

    CLIENT_CLOSED = "client_closed"
    CLIENT_LOGOUT = "client_logout"
    CLIENT_STALLED = "client_stalled"          # stopped reading while we pushed (IDLE)
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error"
    PROTOCOL_ERROR = "protocol_error"
    SHUTDOWN = "shutdown"                      # drained (SIGTERM)
    IDLE_TIMEOUT = "idle_timeout"
    UPSTREAM_TIMEOUT = "upstream_timeout"      # a command unanswered for timeouts.upstream_response
    LOGIN_TIMEOUT = "login_timeout"
    PREAUTH_COMMANDS = "preauth_commands"
    BAD_COMMANDS = "bad_commands"
    AUTH_FAILURES = "auth_failures"
    AUTH_REFUSED = "auth_refused"              # a lookup refused without Auth-Wait (nginx closes)
    STARTTLS_INJECTION = "starttls_injection"  # data pipelined after STARTTLS/STLS
    TLS_FAILED = "tls_failed"                  # the STARTTLS/STLS handshake failed
    TLS_REQUIRED = "tls_required"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"  # implicit TLS: net.tls reasons
    TLS_VERIFY_FAILED = "tls_verify_failed"
    TLS_TIMEOUT = "tls_timeout"
    TLS_ALPN_REFUSED = "tls_alpn_refused"
    MAILBOX_DELETED = "mailbox_deleted"        # gateway: the selected mailbox went away
    INTERNAL_ERROR = "internal_error"
    KICKED = "kicked"                          # ended by an operator (mailproxy kick)

    @property
    def limit(self) -> str | None:
        """The mailproxy_limit_hits_total label when this end is a configured limit."""
        return _LIMITS.get(self)


_LIMITS: dict[Close, str] = {
    Close.IDLE_TIMEOUT: "idle_timeout",
    Close.LOGIN_TIMEOUT: "login_timeout",
    Close.PREAUTH_COMMANDS: "preauth_commands",
    Close.BAD_COMMANDS: "bad_commands",
    Close.AUTH_FAILURES: "auth_failures",
}


# Protocol errors (proxy.imap / proxy.pop3 `ProtocolError.kind`) that are a configured limit.
_LIMIT_OF_PROTOCOL_ERROR = {"line_too_long": "line_length", "literal_too_big": "literal_size",
                            "nonsync_literal_too_big": "literal_size"}


def limit_of_protocol_error(kind: str) -> str | None:
    """The mailproxy_limit_hits_total label when a protocol error is a limit, else None."""
    return _LIMIT_OF_PROTOCOL_ERROR.get(kind)
