"""The bounded label values of mailproxy's metrics (`metrics.py` declares the metrics).

Every label a metric carries is one of a known set: the protocols, the commands of RFC 3501 /
RFC 9051 and the extensions clients send, reply statuses, SASL mechanisms, results, directions,
limits. Values that come from the wire go through the clamping helpers (`command_label`,
`status_label`, `mechanism_label`), which map anything unknown to "other", so no client can add
a series. No imports beyond the standard library: any layer may use these.
"""

from __future__ import annotations

__all__ = [
    "PROTOCOLS", "IMAP_COMMANDS", "POP3_COMMANDS", "IMAP_STATUSES", "POP3_STATUSES",
    "AUTH_MECHANISMS", "AUTH_RESULTS", "TLS_RESULTS", "STARTTLS_SIDES", "STARTTLS_RESULTS",
    "DIRECTIONS", "LOOKUP_KINDS", "LOOKUP_RESULTS", "LOOKUP_CACHE", "LIMITS",
    "OAUTH2_REFRESH_RESULTS", "OTHER", "NONE", "command_label", "status_label", "mechanism_label",
]

OTHER = "other"
OAUTH2_REFRESH_RESULTS = ("ok", "refused", "unavailable")
NONE = "none"  # status of a command whose session ended before the reply
PROTOCOLS = ("imap", "pop3")

# RFC 3501 / RFC 9051 commands plus the extensions clients actually send. UID commands are
# "UID <CMD>" with one space.
IMAP_COMMANDS = frozenset({
    # any state (RFC 9051 6.1)
    "CAPABILITY", "NOOP", "LOGOUT",
    # not authenticated (6.2)
    "STARTTLS", "AUTHENTICATE", "LOGIN",
    # authenticated (6.3)
    "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
    "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE",
    # selected (6.4)
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID",
    "UID FETCH", "UID STORE", "UID SEARCH", "UID COPY", "UID MOVE", "UID EXPUNGE",
    # extensions
    "ID",                                                            # RFC 2971
    "GETQUOTA", "GETQUOTAROOT", "SETQUOTA",                          # RFC 9208
    "GETACL", "SETACL", "DELETEACL", "LISTRIGHTS", "MYRIGHTS",       # RFC 4314
    "COMPRESS",                                                      # RFC 4978
    "SORT", "THREAD", "UID SORT", "UID THREAD",                      # RFC 5256
    "GETMETADATA", "SETMETADATA",                                    # RFC 5464
    "NOTIFY",                                                        # RFC 5465
    "ESEARCH",                                                       # RFC 6237
    "REPLACE", "UID REPLACE",                                        # RFC 8508
    "UNAUTHENTICATE",                                                # RFC 8437
    "XLIST",                                                         # legacy Gmail/Apple
})

POP3_COMMANDS = frozenset({
    "USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT",
    "TOP", "UIDL", "CAPA", "STLS", "UTF8", "LANG", "XCLIENT",
})

_COMMANDS = {"imap": IMAP_COMMANDS, "pop3": POP3_COMMANDS}
_MAX_COMMAND_LEN = max(len(name) for name in IMAP_COMMANDS | POP3_COMMANDS)

IMAP_STATUSES = ("OK", "NO", "BAD")
POP3_STATUSES = ("+OK", "-ERR")
_STATUSES = {"imap": frozenset(IMAP_STATUSES), "pop3": frozenset(POP3_STATUSES)}

# Mechanism label: the SASL mechanism, "LOGIN" for IMAP LOGIN, "USER" for POP3 USER/PASS.
# AUTH_MECHANISMS are the ones the front ends accept, so only their series are pre-created at 0
# (a mechanism joins when a front end accepts it). _MECHANISMS also knows the ones clients try
# that are refused, so those are counted under their name rather than "other".
AUTH_MECHANISMS = {"imap": ("LOGIN", "PLAIN"), "pop3": ("USER", "PLAIN", "LOGIN")}
_MECHANISMS = frozenset(m for ms in AUTH_MECHANISMS.values() for m in ms) | {
    "XOAUTH2", "OAUTHBEARER", "APOP"}
AUTH_RESULTS = ("success", "failure", "tempfail", "throttled")  # session.failures.auth_result
# "ok" plus every server-side TLSHandshakeError.reason (proxy/net/tls.py), the values recorded.
TLS_RESULTS = ("ok", "handshake_failed", "timeout", "alpn_refused")
STARTTLS_SIDES = ("client", "upstream")
STARTTLS_RESULTS = ("ok", "failed", "refused", "injection")
DIRECTIONS = ("client_to_upstream", "upstream_to_client")
# Directory lookups (proxy/routing): `lookups:` entry kinds, and what an answer did: routed the
# login, refused it, passed it on (no answer for the user), or could not be had (down, timeout).
LOOKUP_KINDS = ("http", "ldap")
LOOKUP_RESULTS = ("route", "refuse", "pass", "unavailable")
LOOKUP_CACHE = ("hit", "miss")
LIMITS = frozenset({"line_length", "literal_size", "preauth_commands", "bad_commands",
                    "auth_failures", "idle_timeout", "login_timeout", "max_connections",
                    "max_connections_per_ip", "auth_throttle", "upstream_response"})


def _upper_ascii(value: bytes | str | None, max_len: int) -> str | None:
    """`value` upper-cased if it is short printable ASCII, else None."""
    if value is None or len(value) > max_len:
        return None
    if isinstance(value, bytes):
        if not value.isascii():
            return None
        value = value.decode("ascii")
    elif not value.isascii():
        return None
    return value.upper()


def command_label(protocol: str, name: bytes | str) -> str:
    """The bounded `command` label: the upper-case command name when known, else "other".

    IMAP UID commands are passed as "UID FETCH" (one space). Raises KeyError for an unknown
    protocol, which is a bug in the caller, not client input.
    """
    known = _COMMANDS[protocol]
    label = _upper_ascii(name, _MAX_COMMAND_LEN)
    return label if label in known else OTHER


def status_label(protocol: str, status: bytes | str | None) -> str:
    """The bounded `status` label: OK/NO/BAD (IMAP), +OK/-ERR (POP3), "none" when the session
    ended before the reply (status None), "other" for anything else."""
    if status is None:
        return NONE
    label = _upper_ascii(status, 4)
    return label if label in _STATUSES[protocol] else OTHER


def mechanism_label(name: bytes | str) -> str:
    """The bounded `mechanism` label: a known SASL mechanism, LOGIN or USER, else "other"."""
    label = _upper_ascii(name, 16)
    return label if label in _MECHANISMS else OTHER
