"""YAML configuration -> frozen dataclasses.

Theory of operation: the YAML text is loaded twice, once into plain Python data and once composed
into a node tree that gives every key's line number. Pydantic (a well-kept validator; we use it over
stdlib dataclasses so the rest of the code sees plain frozen dataclasses, not pydantic models)
checks types and rejects unknown keys, reporting every error at once. Cross-field rules (a route
naming an unknown upstream, a TLS listener without certificates...) run afterwards on the typed
result and are collected the same way. Each error carries its YAML path and line.

Secrets (the gateway key, a log-hashing salt, upstream client keys) are never required inline: a
`Secret` is `{file: PATH}` or `{env: NAME}`, resolved at load time, and its repr hides the value.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
)

from .config_messages import describe, dotted_path

_STRICT = ConfigDict(extra="forbid")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem as "path (line N): message"."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _parse_duration(value: Any) -> float:
    """`30s`, `10m`, `1.5h`, `30d`, `250ms` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 10m")
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError("expected a duration such as 30s, 10m, 2h or 30d")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _parse_size(value: Any) -> int:
    """`64KiB`, `50MB`, `8192` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8192, 64KiB or 50MB")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("expected a size such as 8192, 64KiB or 50MB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


Duration = Annotated[float, BeforeValidator(_parse_duration)]
Size = Annotated[int, BeforeValidator(_parse_size)]


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT such as 127.0.0.1:1143 or [::1]:993")
    return Address(host, int(port))


ListenAddress = Annotated[Address, PlainValidator(_parse_address)]


class Secret:
    """A secret value read from a file or the environment; never printed."""

    __slots__ = ("value", "source")

    def __init__(self, value: bytes, source: str):
        self.value = value
        self.source = source

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def _load_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("file", "env"):
        raise ValueError("a secret is {file: PATH} or {env: NAME}, never inline")
    kind, where = next(iter(value.items()))
    if kind == "file":
        try:
            return Secret(Path(where).read_bytes().strip(), f"file {where}")
        except OSError as exc:
            raise ValueError(f"cannot read secret file: {exc.strerror}") from None
    if where not in os.environ:
        raise ValueError(f"environment variable {where} is not set")
    return Secret(os.environ[where].encode(), f"env {where}")


SecretValue = Annotated[Secret, PlainValidator(_load_secret)]


def _load_store(value: Any) -> str:
    """`gateway.store`: a path or URL, or `{file:}`/`{env:}` holding one (a PostgreSQL URL from a
    Kubernetes Secret)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _load_secret(value).value.decode()
    raise ValueError("expected a file path, a postgresql:// URL, or {file: PATH} / {env: NAME}")


StoreLocation = Annotated[str, PlainValidator(_load_store)]

TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True, slots=True)
class Certificate:
    __pydantic_config__ = _STRICT
    cert: Path
    key: Path
    names: tuple[StrictStr, ...] = ()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-listener timeouts. `idle` is the RFC 3501 5.4 autologout timer (at least 30 minutes)."""

    __pydantic_config__ = _STRICT
    login: Duration = 60.0          # from connect to successful authentication
    idle: Duration = 1800.0         # no client command while authenticated
    idle_command: Duration = 1800.0  # one IDLE command (clients re-issue it every <=29 min)
    upstream_connect: Duration = 10.0
    upstream_response: Duration = 300.0  # an upstream reply to a command we sent on our own


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Named limits applied to client input. Pre-authentication ones are tighter."""

    __pydantic_config__ = _STRICT
    max_line: Size = 65536
    max_literal: Size = 64 * 1024 * 1024
    max_nonsync_literal: Size = 4096       # RFC 7888 LITERAL-
    max_depth: StrictInt = 16
    preauth_max_line: Size = 8192
    preauth_max_literal: Size = 8192
    id_line_length: Size = 32768           # one ID line, before login too (RFC 2971 3.3)
    preauth_commands: StrictInt = 20       # commands allowed before authentication
    bad_commands: StrictInt = 20           # BAD replies tolerated before the connection is closed
    auth_failures: StrictInt = 3           # failed logins per connection before it is closed
    pop3_max_command_line: Size = 8192
    inflate_chunk: Size = 64 * 1024        # COMPRESS=DEFLATE: inflated bytes parsed at a time


@dataclass(frozen=True, slots=True)
class Listener:
    __pydantic_config__ = _STRICT
    name: StrictStr
    protocol: Literal["imap", "pop3"]
    address: ListenAddress
    mode: Literal["relay", "gateway"] = "relay"
    tls: TlsMode = "none"
    certificates: tuple[Certificate, ...] = ()
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    allow_plaintext_auth: StrictBool | None = None  # None: only for loopback clients
    require_tls: StrictBool = False
    oauth2_passthrough: StrictBool = False  # offer SASL XOAUTH2/OAUTHBEARER, relayed upstream
    audit: StrictBool = False
    proxy_protocol: StrictBool = False
    trusted_proxies: tuple[StrictStr, ...] = ()
    max_connections: StrictInt = 10000
    max_connections_per_ip: StrictInt = 100
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)


@dataclass(frozen=True, slots=True)
class ServicePort:
    __pydantic_config__ = _STRICT
    port: StrictInt
    tls: TlsMode = "none"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream server, or a pool of equivalent ones (`hosts:`; `host` is then the first)."""

    __pydantic_config__ = _STRICT
    host: StrictStr
    hosts: tuple[StrictStr, ...] = ()   # a pool: each user sticks to one (proxy/routing/pool.py)
    imap: ServicePort | None = None
    pop3: ServicePort | None = None
    verify: StrictBool = True
    ca_file: Path | None = None
    server_name: StrictStr | None = None
    client_cert: Certificate | None = None
    forward_client_ip: StrictBool = False
    health_check_interval: Duration = 30.0

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

    __pydantic_config__ = _STRICT
    ttl: Duration = 60.0
    negative_ttl: Duration = 10.0
    max_entries: StrictInt = 10000


@dataclass(frozen=True, slots=True)
class HttpLookup:
    """nginx's `auth_http` protocol (proxy/routing/http_lookup.py)."""

    __pydantic_config__ = _STRICT
    url: StrictStr
    name: StrictStr = "http"                 # in logs and metrics
    timeout: Duration = 5.0                  # nginx: auth_http_timeout
    headers: dict[StrictStr, StrictStr] = field(default_factory=dict)  # nginx: auth_http_header
    secret_headers: dict[StrictStr, SecretValue] = field(default_factory=dict)
    upstream: StrictStr | None = None        # TLS and other settings for the hosts it names
    cache: LookupCache = field(default_factory=LookupCache)


@dataclass(frozen=True, slots=True)
class HttpLookupEntry:
    __pydantic_config__ = _STRICT
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

    __pydantic_config__ = _STRICT
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
    __pydantic_config__ = _STRICT
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
    __pydantic_config__ = _STRICT
    match: StrictStr
    upstream: StrictStr

    def matches(self, user: str) -> bool:
        return user == self.match or fnmatch.fnmatchcase(user.lower(), self.match.lower())


@dataclass(frozen=True, slots=True)
class Logging:
    __pydantic_config__ = _STRICT
    user: Literal["full", "domain", "hash"] = "full"
    hash_key: SecretValue | None = None  # salt for `user: hash`; random per process otherwise


@dataclass(frozen=True, slots=True)
class Metrics:
    __pydantic_config__ = _STRICT
    address: ListenAddress


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds on what one message or one command may cost the gateway (issue 14)."""

    __pydantic_config__ = _STRICT
    mime_max_depth: StrictInt = 100       # deeper multipart/message parts are opaque leaves
    mime_max_parts: StrictInt = 10000     # past this many parts, boundaries are not recognised
    command_budget: Duration = 60.0       # a command running longer answers NO [LIMIT]
    sequence_set_ranges: StrictInt = 100000   # distinct ranges in one sequence set, else BAD


@dataclass(frozen=True, slots=True)
class Gateway:
    __pydantic_config__ = _STRICT
    store: StoreLocation = "mailproxy-gateway.db"  # SQLite file, or postgresql://user@host/db?...
    store_password: SecretValue | None = None  # PostgreSQL password ({file:}/{env:}), not in the URL
    store_pool_size: StrictInt = 10            # PostgreSQL connections per process
    poll_interval: Duration = 60.0
    upstream_retention: StrictStr = "keep"  # keep | delete-after-fetch | a duration such as 30d
    key_file: Path | None = None
    background_poll: StrictBool = False
    auth_cache_ttl: Duration = 300.0
    change_log_keep: StrictInt = 10000    # MODSEQs of change history kept per mailbox (QRESYNC)
    user_case: Literal["lower", "domain", "preserve"] = "lower"   # proxy/gateway/users.py
    limits: GatewayLimits = field(default_factory=GatewayLimits)

    @property
    def retention_seconds(self) -> float | None:
        """None for `keep`, 0 for `delete-after-fetch`, else the delay before DELE."""
        if self.upstream_retention == "keep":
            return None
        if self.upstream_retention == "delete-after-fetch":
            return 0.0
        return _parse_duration(self.upstream_retention)


@dataclass(frozen=True, slots=True)
class AuthThrottle:
    """Failed-login throttling per client IP and per user (proxy/net/throttle.py)."""

    __pydantic_config__ = _STRICT
    enabled: StrictBool = True
    base_delay: Duration = 0.5     # delay of the first failure's reply, doubled per failure
    max_delay: Duration = 8.0
    window: Duration = 300.0       # failures older than this are forgotten
    block_after: StrictInt = 10    # failures within the window before refusing an IP, or a user from an IP
    user_block_after: StrictInt = 100   # failures from all IPs before refusing a user everywhere
    block_for: Duration = 300.0


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin HTTP endpoint (proxy/admin.py): off unless configured; bearer token."""

    __pydantic_config__ = _STRICT
    address: ListenAddress
    token: SecretValue


@dataclass(frozen=True, slots=True)
class Config:
    __pydantic_config__ = _STRICT
    listeners: tuple[Listener, ...]
    upstreams: dict[StrictStr, PoolableUpstream]
    routes: tuple[Route, ...] = ()
    lookups: tuple[LookupEntry, ...] = ()   # asked in order before `routes` (proxy/routing/)
    logging: Logging = field(default_factory=Logging)
    metrics: Metrics | None = None
    gateway: Gateway | None = None
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    shutdown_timeout: Duration = 30.0
    admin: Admin | None = None

    def route(self, user: str) -> str | None:
        """The upstream name for `user`: the first matching route wins."""
        for route in self.routes:
            if route.matches(user):
                return route.upstream
        return None


_ADAPTER = TypeAdapter(Config)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file. Raises ConfigError listing every problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    return loads(text, base_dir=Path(path).resolve().parent)


def loads(text: str, *, base_dir: Path | None = None) -> Config:
    """Validate YAML text. Relative file paths are resolved against `base_dir` when given."""
    try:
        data = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([f"YAML syntax error{where}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping with listeners, upstreams and routes"])
    try:
        config = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError([_line(*describe(err, Config), lines) for err in exc.errors()]) from None
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    errors = [_line(loc, f"{dotted_path(loc)}: {msg}", lines) for loc, msg in _semantic_errors(config)]
    if errors:
        raise ConfigError(errors)
    return config


def _line_map(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """Map each YAML path (keys and list indexes) to its 1-based line number."""
    lines: dict[tuple, int] = {}
    if node is None:
        return lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = path + (key_node.value,)
            lines.update(_line_map(value_node, key))
            lines[key] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_map(item, path + (index,)))
    return lines


def _line(loc: tuple, message: str, lines: dict[tuple, int]) -> str:
    """`line N: message`, N being the line of `loc` or of its nearest enclosing key."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"line {lines[loc[:end]]}: {message}"
    return message


def _semantic_errors(config: Config) -> list[tuple[tuple, str]]:
    errors: list[tuple[tuple, str]] = []
    names: set[str] = set()
    for i, lst in enumerate(config.listeners):
        where = ("listeners", i)
        if lst.name in names:
            errors.append((where + ("name",), f"duplicate listener name {lst.name!r}"))
        names.add(lst.name)
        if lst.tls != "none" and not lst.certificates:
            errors.append((where + ("certificates",), "tls needs at least one certificate"))
        if lst.require_tls and lst.tls != "starttls":
            errors.append((where + ("require_tls",), "require_tls only applies to tls: starttls"))
        if lst.mode == "gateway" and lst.protocol != "imap":
            errors.append((where + ("mode",), "gateway listeners speak IMAP (protocol: imap)"))
        if lst.mode == "gateway" and config.gateway is None:
            errors.append((where + ("mode",), "mode: gateway needs a top-level gateway: section"))
        for j, net in enumerate(lst.trusted_proxies):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                errors.append((where + ("trusted_proxies", j), f"not a CIDR network: {net!r}"))
        if lst.proxy_protocol and not lst.trusted_proxies:
            errors.append((where + ("trusted_proxies",), "proxy_protocol needs trusted_proxies"))
    errors += _address_conflicts(config)
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
    if config.gateway is not None and config.gateway.background_poll \
            and config.gateway.key_file is None:
        errors.append((("gateway", "background_poll"),
                       "background_poll needs gateway.key_file (credentials are stored only "
                       "encrypted); set key_file (mailproxy gen-key writes one) or remove "
                       "background_poll"))
    if config.gateway is not None:
        try:
            _ = config.gateway.retention_seconds
        except ValueError:
            errors.append((("gateway", "upstream_retention"),
                           "expected keep, delete-after-fetch or a duration such as 30d"))
        limits = config.gateway.limits
        if not 1 <= limits.mime_max_depth <= 200:   # the part tree is walked recursively
            errors.append((("gateway", "limits", "mime_max_depth"), "expected 1 to 200"))
        if limits.mime_max_parts < 1:
            errors.append((("gateway", "limits", "mime_max_parts"), "expected at least 1"))
        if not 1 <= config.gateway.store_pool_size <= 1000:
            errors.append((("gateway", "store_pool_size"), "expected 1 to 1000 connections"))
        if config.gateway.store_password is not None and "://" not in config.gateway.store:
            errors.append((("gateway", "store_password"),
                           "only a postgresql:// store takes a password"))
    return errors


def _address_conflicts(config: Config) -> list[tuple[tuple, str]]:
    """Two sockets on one address (a wildcard host covers every address of its family)."""
    taken: list[tuple[tuple, Address]] = []
    if config.metrics is not None:
        taken.append((("metrics", "address"), config.metrics.address))
    if config.admin is not None:
        taken.append((("admin", "address"), config.admin.address))
    taken += [(("listeners", i, "address"), lst.address) for i, lst in enumerate(config.listeners)]
    errors = []
    for n, (loc, address) in enumerate(taken):
        for other_loc, other in taken[:n]:
            if address.port != 0 and address.port == other.port and _overlap(address, other):
                errors.append((loc, f"{address} is also used by {dotted_path(other_loc)}; "
                                    f"give each listener its own port"))
                break
    return errors


def _overlap(a: Address, b: Address) -> bool:
    wildcards = {"0.0.0.0", "::", ""}
    if a.host == b.host:
        return True
    if a.host in wildcards or b.host in wildcards:
        return (":" in a.host) == (":" in b.host)
    return False


def _resolve_paths(config: Config, base: Path) -> Config:
    """Make certificate, CA and key paths relative to the config file's directory."""
    from dataclasses import replace

    def fix(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    def fix_cert(cert: Certificate) -> Certificate:
        return replace(cert, cert=base / cert.cert, key=base / cert.key)  # `/` keeps absolute paths

    listeners = tuple(replace(lst, certificates=tuple(fix_cert(c) for c in lst.certificates))
                      for lst in config.listeners)
    upstreams = {name: replace(up, ca_file=fix(up.ca_file),
                               client_cert=None if up.client_cert is None else fix_cert(up.client_cert))
                 for name, up in config.upstreams.items()}
    gateway = config.gateway
    if gateway is not None:
        store = gateway.store
        if "://" not in store and not Path(store).is_absolute():
            store = str(base / store)
        gateway = replace(gateway, store=store, key_file=fix(gateway.key_file))
    return replace(config, listeners=listeners, upstreams=upstreams, gateway=gateway)
