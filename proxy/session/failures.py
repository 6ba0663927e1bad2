"""Why a session, or one attempt inside it, failed.

One `Failure` value picks the reply the client gets, the log level and the metric label
(`reason` on `mailproxy_upstream_errors_total`; `metrics.FAILURE_REASONS` is exactly the set of
values). Code that catches an error maps it to a `Failure` once, where it is caught, and everything
downstream of that decision reads the enum rather than the exception.
(After Dovecot's `login_proxy_failure_type`.)
"""

from __future__ import annotations

import enum
import logging

__all__ = ["Failure", "LOG_LEVEL"]


class Failure(enum.Enum):
    """A failure reason; the value is the lower-case name and is used as a metric label."""

    CONNECT = "connect"              # TCP connect to the upstream failed or timed out
    TLS = "tls"                      # a TLS handshake or certificate check failed
    UPSTREAM = "upstream"            # the upstream broke the connection or sent a bad greeting
    PROTOCOL = "protocol"            # a peer violated the protocol (unparseable input)
    AUTH_REJECTED = "auth_rejected"  # the upstream said NO / -ERR to the credentials
    AUTH_TEMPFAIL = "auth_tempfail"  # authentication could not be decided now ([UNAVAILABLE], [SYS/TEMP])
    LIMIT = "limit"                  # a configured limit was hit (see metrics.LIMITS)
    TIMEOUT = "timeout"              # a login, idle or upstream response timer expired
    INTERNAL = "internal"            # a bug or unexpected error on our side
    CLIENT_GONE = "client_gone"      # the client went away; nobody to reply to

    @property
    def label(self) -> str:
        """The metric label (`reason` on mailproxy_upstream_errors_total)."""
        return self.value

    @classmethod
    def labels(cls) -> frozenset[str]:
        return frozenset(failure.value for failure in cls)


LOG_LEVEL: dict[Failure, int] = {
    Failure.CONNECT: logging.WARNING,
    Failure.TLS: logging.WARNING,
    Failure.UPSTREAM: logging.WARNING,
    Failure.PROTOCOL: logging.INFO,
    Failure.AUTH_REJECTED: logging.INFO,
    Failure.AUTH_TEMPFAIL: logging.WARNING,
    Failure.LIMIT: logging.INFO,
    Failure.TIMEOUT: logging.INFO,
    Failure.INTERNAL: logging.ERROR,
    Failure.CLIENT_GONE: logging.DEBUG,
}
