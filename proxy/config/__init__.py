"""YAML configuration -> frozen dataclasses.

Theory of operation: the YAML text is loaded twice, once into plain Python data and once composed
into a node tree that gives every key's line number. Pydantic (a well-kept validator; we use it over
stdlib dataclasses so the rest of the code sees plain frozen dataclasses, not pydantic models)
checks types and rejects unknown keys, reporting every error at once. Cross-field rules (a route
naming an unknown upstream, a TLS listener without certificates...) run afterwards on the typed
result and are collected the same way. Each error carries its YAML path and line.

Secrets (the gateway key, a log-hashing salt, upstream client keys) are never required inline: a
`Secret` is `{file: PATH}` or `{env: NAME}`, resolved at load time, and its repr hides the value.

One module per section, each with its dataclasses and its cross-field rules (`check_*`):
values.py (durations, sizes, addresses, secrets, certificates), listeners.py, upstreams.py
(upstreams, routes, lookups), oauth2.py (an upstream's auth: brokered OAuth2), gateway.py,
operations.py (logging, metrics, auth_throttle, admin); loader.py holds `Config`, `load()` and
`loads()`; messages.py words pydantic's errors; report.py has `load_or_report()` for the CLI
tools. Everything public is importable from `proxy.config` itself.
"""

from .gateway import Gateway, GatewayLimits, GatewayQuota, StoreLocation
from .listeners import Listener, ProtocolLimits, Timeouts
from .loader import Config, ConfigError, load, loads
from .oauth2 import OAuth2, UpstreamAuth
from .operations import GIL_SWITCH_INTERVAL, Admin, AuthThrottle, Logging, Metrics, Relay
from .report import load_or_report
from .upstreams import (
    HttpLookup,
    HttpLookupEntry,
    ImapService,
    LdapLookup,
    LdapLookupEntry,
    LookupCache,
    LookupEntry,
    PoolableUpstream,
    Pop3Service,
    Reuse,
    Route,
    ServicePort,
    Upstream,
    WarmPool,
)
from .values import (
    Address,
    Certificate,
    Duration,
    ListenAddress,
    Secret,
    SecretValue,
    Size,
    TlsMode,
)

__all__ = [
    "GIL_SWITCH_INTERVAL", "Address", "Admin", "AuthThrottle", "Certificate", "Config",
    "ConfigError", "Duration",
    "Gateway", "GatewayLimits", "GatewayQuota", "HttpLookup", "HttpLookupEntry", "ImapService", "LdapLookup",
    "LdapLookupEntry", "ListenAddress", "Listener", "Logging", "LookupCache", "LookupEntry",
    "Metrics", "OAuth2", "Pop3Service",
    "PoolableUpstream", "ProtocolLimits", "Relay", "Reuse", "Route", "Secret", "SecretValue",
    "ServicePort", "Size",
    "StoreLocation", "Timeouts", "TlsMode", "Upstream", "UpstreamAuth", "WarmPool", "load", "load_or_report",
    "loads",
]
