"""`upstreams:`, `routes:` and `lookups:`: where each user's mail lives and how to reach it, and
the rules that tie them together (every route and lookup names a known upstream speaking the
listeners' protocols)."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BeforeValidator, Discriminator, StrictBool, StrictInt, StrictStr, Tag

from .oauth2 import UpstreamAuth, check_oauth2
from .values import STRICT, Certificate, Duration, Problem, SecretValue, TlsMode

if TYPE_CHECKING:
    from .loader import Config


MAX_WARM_POOL_SIZE = 64        # warm connections per upstream service and process
MAX_WARM_POOL_AGE = 300.0      # seconds


@dataclass(frozen=True, slots=True)
class WarmPool:
    """`warm_pool:` of an upstream's imap:/pop3: service (proxy/session/warm_pool.py): up to
    `size` connections kept open and greeted ahead of the relay's logins, each used once and
    closed unused after `max_age` (keep it below the upstream's pre-login idle timeout)."""

    __pydantic_config__ = STRICT
    size: StrictInt = 2
    max_age: Duration = 20.0


MAX_REUSE_SIZE = 1024          # parked authenticated connections per process
MAX_REUSE_AGE = 3600.0         # seconds


@dataclass(frozen=True, slots=True)
class Reuse:
    """`reuse:` of an upstream's imap: service (proxy/relay/upstream_pool.py), off by default: an
    authenticated connection whose client logged out cleanly is kept, up to `size` per process,
    for a later login of the same user with the same password within `max_age` of its real
    login (a password change or a disabled account takes effect after at most that), parked
    `max_idle` at most."""

    __pydantic_config__ = STRICT
    max_age: Duration = 60.0
    max_idle: Duration = 30.0
    size: StrictInt = 16


@dataclass(frozen=True, slots=True)
class ServicePort:
    __pydantic_config__ = STRICT
    port: StrictInt
    tls: TlsMode = "none"
    warm_pool: WarmPool | None = None   # off by default
    connect_early: StrictBool = False   # proxy/session/connect_early.py


@dataclass(frozen=True, slots=True)
class ImapService(ServicePort):
    """An upstream's IMAP service. `pipelined_login`: once a greeting of this upstream has
    announced its capabilities, later logins (and the ID) are written right after the connect,
    before the greeting is read (proxy/relay/imap_upstream.py); false waits for the greeting,
    for servers that refuse a client speaking first (greeting-delay / early-talker defences)."""

    pipelined_login: StrictBool = True
    reuse: Reuse | None = None   # off by default


@dataclass(frozen=True, slots=True)
class Pop3Service(ServicePort):
    """An upstream's POP3 service. `pipelined_login`: once this upstream's CAPA has announced
    PIPELINING (RFC 2449 6.6) and a login method, later logins (with XCLIENT and the CAPA after
    them) are written right after the connect, before the greeting is read
    (proxy/relay/pop3_upstream.py); false waits for the greeting, as for IMAP."""

    pipelined_login: StrictBool = True


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream server, or a pool of equivalent ones (`hosts:`; `host` is then the first)."""

    __pydantic_config__ = STRICT
    host: StrictStr
    hosts: tuple[StrictStr, ...] = ()   # a pool: each user sticks to one (proxy/routing/pool.py)
    imap: ImapService | None = None
    pop3: Pop3Service | None = None
    verify: StrictBool = True
    ca_file: Path | None = None
    server_name: StrictStr | None = None
    client_cert: Certificate | None = None
    forward_client_ip: StrictBool = False
    health_check_interval: Duration = 30.0
    auth: UpstreamAuth | None = None     # oauth2: brokered logins (proxy/oauth2/)

    @property
    def pool(self) -> tuple[str, ...]:
        """The hosts of this upstream: `hosts`, or the single `host`."""
        return self.hosts or (self.host,)


def _upstream_hosts(value: Any) -> Any:
    """`hosts: [a, b]` alone makes a pool; `host` is then its first member."""
    if isinstance(value, dict) and "hosts" in value:
        if "host" in value:
            raise ValueError("give host (one server) or hosts (a pool), not both")
        hosts = value["hosts"]
        if not isinstance(hosts, list) or not hosts:
            raise ValueError("hosts is a non-empty list of host names or addresses")
        return {**value, "host": hosts[0]}
    return value


PoolableUpstream = Annotated[Upstream, BeforeValidator(_upstream_hosts)]


@dataclass(frozen=True, slots=True)
class LookupCache:
    """A lookup's answers kept in memory: `ttl` for a route, `negative_ttl` for a refusal
    (0 disables either); at most `max_entries` of each, least recently used evicted first."""

    __pydantic_config__ = STRICT
    ttl: Duration = 60.0
    negative_ttl: Duration = 10.0
    max_entries: StrictInt = 10000


@dataclass(frozen=True, slots=True)
class HttpLookup:
    """nginx's `auth_http` protocol (proxy/routing/http_lookup.py)."""

    __pydantic_config__ = STRICT
    url: StrictStr
    name: StrictStr = "http"                 # in logs and metrics
    timeout: Duration = 5.0                  # nginx: auth_http_timeout
    headers: dict[StrictStr, StrictStr] = field(default_factory=dict)  # nginx: auth_http_header
    secret_headers: dict[StrictStr, SecretValue] = field(default_factory=dict)
    upstream: StrictStr | None = None        # TLS and other settings for the hosts it names
    cache: LookupCache = field(default_factory=LookupCache)


@dataclass(frozen=True, slots=True)
class HttpLookupEntry:
    __pydantic_config__ = STRICT
    http: HttpLookup
    kind: ClassVar[str] = "http"

    @property
    def lookup(self) -> HttpLookup:
        return self.http


@dataclass(frozen=True, slots=True)
class LdapLookup:
    """A directory entry per user, found by `filter` under `base` (proxy/routing/ldap_lookup.py).
    The entry's `host_attribute` names a configured upstream, a `host:port`, or a host whose
    port is `port_attribute` or the `upstream:` settings' port for the protocol."""

    __pydantic_config__ = STRICT
    url: StrictStr                           # ldap://host:389 or ldaps://host:636
    base: StrictStr
    filter: StrictStr = "(mail={user})"      # {user}: the login name, RFC 4515 escaped
    name: StrictStr = "ldap"
    bind_dn: StrictStr | None = None         # anonymous when absent
    bind_password: SecretValue | None = None
    host_attribute: StrictStr = "mailHost"
    port_attribute: StrictStr | None = None
    user_attribute: StrictStr | None = None  # the login name upstream (rewriting)
    timeout: Duration = 5.0
    max_concurrent: StrictInt = 4            # searches under way at once (threads)
    upstream: StrictStr | None = None
    cache: LookupCache = field(default_factory=LookupCache)


@dataclass(frozen=True, slots=True)
class LdapLookupEntry:
    __pydantic_config__ = STRICT
    ldap: LdapLookup
    kind: ClassVar[str] = "ldap"

    @property
    def lookup(self) -> LdapLookup:
        return self.ldap


def _lookup_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return getattr(value, "kind", None)  # an already validated entry


LookupEntry = Annotated[
    Annotated[HttpLookupEntry, Tag("http")] | Annotated[LdapLookupEntry, Tag("ldap")],
    Discriminator(_lookup_kind, custom_error_type="lookup_kind",
                  custom_error_message="a lookup is {http: {...}} or {ldap: {...}}"),
]


@dataclass(frozen=True, slots=True)
class Route:
    __pydantic_config__ = STRICT
    match: StrictStr
    upstream: StrictStr

    def matches(self, user: str) -> bool:
        return user == self.match or fnmatch.fnmatchcase(user.lower(), self.match.lower())


def check_routing(config: Config) -> list[Problem]:
    """Routes and lookups name known upstreams that speak what the listeners need."""
    errors: list[Problem] = []
    if not config.routes and not config.lookups:
        errors.append((("routes",), "at least one route (or a lookup) is needed"))
    lookup_names: set[str] = set()
    for i, entry in enumerate(config.lookups):
        lookup = entry.lookup
        at = ("lookups", i, entry.kind)
        if lookup.name in lookup_names or lookup.name in config.upstreams:
            errors.append((at + ("name",), f"lookup name {lookup.name!r} is already used "
                                              "by a lookup or an upstream"))
        lookup_names.add(lookup.name)
        if lookup.upstream is not None and lookup.upstream not in config.upstreams:
            errors.append((at + ("upstream",), f"unknown upstream {lookup.upstream!r}"))
        if lookup.cache.max_entries < 0:
            errors.append((at + ("cache", "max_entries"), "must be 0 or more"))
        if isinstance(lookup, LdapLookup):
            if "{user}" not in lookup.filter:
                errors.append((at + ("filter",), "the filter needs {user}"))
            if lookup.max_concurrent < 1:
                errors.append((at + ("max_concurrent",), "must be 1 or more"))
            if (lookup.bind_dn is None) != (lookup.bind_password is None):
                errors.append((at + ("bind_dn",), "bind_dn and bind_password go together"))
    for i, route in enumerate(config.routes):
        if route.upstream not in config.upstreams:
            errors.append((("routes", i, "upstream"), f"unknown upstream {route.upstream!r}"))
    for name, up in config.upstreams.items():
        if up.imap is None and up.pop3 is None:
            errors.append((("upstreams", name), "an upstream needs an imap: or pop3: section"))
        if up.auth is not None and up.auth.oauth2 is not None:
            errors += check_oauth2(("upstreams", name, "auth", "oauth2"), up.auth.oauth2)
        errors += _check_warm_pools(name, up)
        errors += _check_connect_early(config, name, up)
        errors += _check_reuse(name, up)
    # an IMAP relay listener needs the routes' upstreams to speak IMAP; POP3 relays and the
    # gateway (which reads mailboxes over POP3) need POP3
    needed = {"imap" if lst.mode == "relay" and lst.protocol == "imap" else "pop3"
              for lst in config.listeners}
    for j, route in enumerate(config.routes):
        target = config.upstreams.get(route.upstream)
        for service in sorted(needed):
            if target is not None and getattr(target, service) is None:
                errors.append((("routes", j, "upstream"),
                               f"upstream {route.upstream!r} needs a {service}: section for "
                               f"the {service} listeners"))
    return errors


def _check_warm_pools(name: str, up: Upstream) -> list[Problem]:
    """A warm pool holds plaintext connections to the one host of its upstream."""
    errors: list[Problem] = []
    for protocol in ("imap", "pop3"):
        svc: ServicePort | None = getattr(up, protocol)
        if svc is None or svc.warm_pool is None:
            continue
        at = ("upstreams", name, protocol, "warm_pool")
        pool = svc.warm_pool
        if not 1 <= pool.size <= MAX_WARM_POOL_SIZE:
            errors.append((at + ("size",), f"must be 1 to {MAX_WARM_POOL_SIZE}"))
        if not 0 < pool.max_age <= MAX_WARM_POOL_AGE:
            errors.append((at + ("max_age",), f"must be above 0 and at most {MAX_WARM_POOL_AGE:g}s"))
        if svc.tls != "none":
            errors.append((at, f"warm connections are plaintext only: this service has tls: "
                               f"{svc.tls} (remove warm_pool, or connect without TLS)"))
        if len(up.pool) > 1:
            errors.append((at, "warm connections need one host: this upstream has hosts: "
                               "(remove warm_pool, or give one host)"))
    return errors


def _check_connect_early(config: Config, name: str, up: Upstream) -> list[Problem]:
    """Connecting at accept needs a route that cannot depend on the user."""
    errors: list[Problem] = []
    for protocol in ("imap", "pop3"):
        svc: ServicePort | None = getattr(up, protocol)
        if svc is None or not svc.connect_early:
            continue
        at = ("upstreams", name, protocol, "connect_early")
        if config.lookups or {route.upstream for route in config.routes} != {name}:
            errors.append((at, "connecting at accept needs every login routed here: no "
                               "lookups, and every route to this upstream"))
        if len(up.pool) > 1:
            errors.append((at, "connecting at accept needs one host: this upstream has hosts:"))
        elif not _is_ip(up.host):
            errors.append((at, "connecting at accept needs an IP address as host (no lookup "
                               "of a name at every accept)"))
        if svc.warm_pool is not None:
            errors.append((at, "give connect_early or warm_pool, not both"))
    return errors


def _check_reuse(name: str, up: Upstream) -> list[Problem]:
    """Reuse is the relay engine's login (relay/engine_login_route.py): refuse a setting that
    would never reuse anything."""
    svc = up.imap
    if not isinstance(svc, ImapService) or svc.reuse is None:
        return []
    at = ("upstreams", name, "imap", "reuse")
    reuse = svc.reuse
    errors: list[Problem] = []
    if not 1 <= reuse.size <= MAX_REUSE_SIZE:
        errors.append((at + ("size",), f"must be 1 to {MAX_REUSE_SIZE}"))
    if not 0 < reuse.max_age <= MAX_REUSE_AGE:
        errors.append((at + ("max_age",), f"must be above 0 and at most {MAX_REUSE_AGE:g}s"))
    if not 0 < reuse.max_idle <= MAX_REUSE_AGE:
        errors.append((at + ("max_idle",), f"must be above 0 and at most {MAX_REUSE_AGE:g}s"))
    why = ("tls: none" if svc.tls != "none" else "pipelined_login: true"
           if not svc.pipelined_login else "no warm_pool" if svc.warm_pool is not None
           else "no auth: (brokered logins)" if up.auth is not None
           else "one host" if len(up.pool) > 1 else "an IP address as host"
           if not _is_ip(up.host) else None)
    if why is not None:
        errors.append((at, f"reused connections are the relay engine's logins: they need {why}"))
    return errors


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
