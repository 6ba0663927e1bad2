"""`listeners:`: the sockets clients connect to, their TLS, timeouts and input limits, and the
rules that tie them together (names unique, one socket per address)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import StrictBool, StrictInt, StrictStr

from .messages import dotted_path
from .values import STRICT, Address, Certificate, Duration, ListenAddress, Problem, Size, TlsMode

if TYPE_CHECKING:
    from .loader import Config


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-listener timeouts. `idle` is the RFC 3501 5.4 autologout timer (at least 30 minutes)."""

    __pydantic_config__ = STRICT
    login: Duration = 60.0          # from connect to successful authentication
    idle: Duration = 1800.0         # no client command while authenticated
    idle_command: Duration = 1800.0  # one IDLE command (clients re-issue it every <=29 min)
    upstream_connect: Duration = 10.0
    upstream_response: Duration = 300.0  # an upstream reply to a command we sent on our own


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Named limits applied to client input. Pre-authentication ones are tighter."""

    __pydantic_config__ = STRICT
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
    __pydantic_config__ = STRICT
    name: StrictStr
    protocol: Literal["imap", "pop3"]
    address: ListenAddress
    mode: Literal["relay", "gateway"] = "relay"
    tls: TlsMode = "none"
    certificates: tuple[Certificate, ...] = ()
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    tls_session_tickets: StrictBool = True   # resumption by stateless tickets (net/tls.py)
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


def check_listeners(config: Config) -> list[Problem]:
    """Each listener's own rules, then no two sockets (listeners, metrics, admin) on one address."""
    errors: list[Problem] = []
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
    return errors + _address_conflicts(config)


def _address_conflicts(config: Config) -> list[Problem]:
    """Two sockets on one address (a wildcard host covers every address of its family)."""
    taken: list[tuple[tuple[str | int, ...], Address]] = []
    if config.metrics is not None:
        taken.append((("metrics", "address"), config.metrics.address))
    if config.admin is not None and config.admin.address is not None:
        taken.append((("admin", "address"), config.admin.address))
    taken += [(("listeners", i, "address"), lst.address) for i, lst in enumerate(config.listeners)]
    errors: list[Problem] = []
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
