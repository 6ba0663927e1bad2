"""The `ldap` lookup: one directory entry per user says where the user lives (like Perdition's
LDAP map). ldap3 is synchronous, so each search runs in a worker thread (at most
`max_concurrent` at once), bounded by `timeout`.

Theory of operation. The filter (`(mail={user})` by default, the user RFC 4515-escaped) is
searched under `base` (whole subtree), asking only for the host, port and user attributes.
No entry (or an entry without the host attribute): no answer, the next lookup or the routes
decide. More than one entry: the directory is ambiguous, which is an operator's error, so the
login gets a tempfail and the log says why. One entry: its host attribute is a configured
upstream's name, or `host:port`, or a host whose port is the port attribute's value (else the
`upstream:` settings' port for the protocol); its user attribute, when configured and present,
is the login name upstream. The lookup routes only: the upstream checks the password.

One connection (ldap3's thread-safe SAFE_SYNC strategy) is shared by the threads; after any
LDAP error it is dropped and the next search opens a new one.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import ldap3
import trio
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from .. import logs
from ..config import LdapLookup as LdapLookupConfig
from .answers import Answer, LoginQuery, LookupUnavailable, Target


def _first(attributes: dict[str, Any], name: str | None) -> str | None:
    if name is None:
        return None
    value = attributes.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value in (None, "") else str(value)


def answer_from_entry(attributes: dict[str, Any], settings: LdapLookupConfig,
                      upstream_names: frozenset[str]) -> Answer | None:
    """One entry's attributes -> the answer (see the module docstring)."""
    host = _first(attributes, settings.host_attribute)
    if host is None:
        return None
    user = _first(attributes, settings.user_attribute)
    if host in upstream_names:
        return Target(host, user=user)
    port_text = _first(attributes, settings.port_attribute)
    if port_text is None and host.count(":") == 1:
        host, _, port_text = host.partition(":")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise LookupUnavailable(f"invalid port {logs.sanitize(port_text, 20)}")
        port = int(port_text)
    return Target(None, host=host.strip("[]"), port=port, user=user)


class LdapLookup:
    kind = "ldap"

    def __init__(self, settings: LdapLookupConfig, upstream_names: frozenset[str]):
        self.settings = settings
        self.name = settings.name
        self._upstreams = upstream_names
        self._limiter = trio.CapacityLimiter(settings.max_concurrent)
        self._lock = threading.Lock()
        self._conn: ldap3.Connection | None = None
        wanted = [settings.host_attribute, settings.port_attribute, settings.user_attribute]
        self._attributes = [a for a in wanted if a]

    def _connection(self) -> ldap3.Connection:
        with self._lock:
            if self._conn is None:
                s = self.settings
                server = ldap3.Server(s.url, connect_timeout=s.timeout, get_info=ldap3.NONE)
                password = s.bind_password.value.decode() if s.bind_password else None
                self._conn = ldap3.Connection(server, user=s.bind_dn, password=password,
                                              client_strategy=ldap3.SAFE_SYNC, auto_bind=True,
                                              receive_timeout=math.ceil(s.timeout),  # whole seconds
                                              read_only=True)
            return self._conn

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.unbind()
            except LDAPException:
                pass

    def _search(self, user: str) -> list[dict[str, Any]]:
        """In a worker thread: the matching entries' attributes."""
        ldap_filter = self.settings.filter.replace("{user}", escape_filter_chars(user))
        try:
            ok, result, response, _ = self._connection().search(
                self.settings.base, ldap_filter, attributes=self._attributes, size_limit=2,
                time_limit=max(1, int(self.settings.timeout)))
        except LDAPException as exc:
            self._drop()
            raise LookupUnavailable(f"{type(exc).__name__}: {logs.sanitize(str(exc), 80)}"
                                    ) from None
        if not ok and result.get("description") not in ("success", "sizeLimitExceeded",
                                                          "noSuchObject"):
            raise LookupUnavailable(f"search failed: {logs.sanitize(str(result.get('description')), 60)}")
        return [dict(item["attributes"]) for item in response or ()
                if item.get("type") == "searchResEntry"]

    async def ask(self, query: LoginQuery) -> Answer | None:
        with trio.move_on_after(self.settings.timeout) as scope:
            entries = await trio.to_thread.run_sync(self._search, query.user,
                                                    limiter=self._limiter,
                                                    abandon_on_cancel=True)
        if scope.cancelled_caught:
            raise LookupUnavailable(f"no reply within {self.settings.timeout:g}s")
        if len(entries) > 1:
            raise LookupUnavailable("more than one entry matches the filter")
        return answer_from_entry(entries[0], self.settings, self._upstreams) if entries else None

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._drop)
