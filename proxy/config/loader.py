"""The whole config (`Config`) and its loading: YAML text -> validated frozen dataclasses.

Theory of operation: see proxy/config/__init__.py. `loads()` validates types with pydantic (every
error at once, in our words by messages.describe), resolves relative paths against the config
file's directory, then runs each section's cross-field rules (check_* in the section modules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from pydantic import StrictStr, TypeAdapter, ValidationError

from .gateway import Gateway, check_gateway
from .listeners import Listener, check_listeners
from .messages import describe, dotted_path
from .oauth2 import resolve_auth_paths
from .operations import (
    Admin,
    AuthThrottle,
    Collector,
    Logging,
    Metrics,
    Relay,
    Workers,
    check_admin,
    check_collector,
    check_relay,
    check_workers,
)
from .upstreams import LookupEntry, PoolableUpstream, Route, check_routing
from .values import STRICT, Certificate, Duration, Problem


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem as "path (line N): message"."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Config:
    __pydantic_config__ = STRICT
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
    workers: Workers = 1   # processes sharing the listeners (proxy/workers/)
    relay: Relay = field(default_factory=Relay)   # how logged-in relay sessions are driven
    gc: Collector = field(default_factory=Collector)   # the garbage collector (proxy/collector.py)

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
    errors = [_line(loc, f"{dotted_path(loc)}: {msg}", lines) for loc, msg in _problems(config)]
    if errors:
        raise ConfigError(errors)
    return config


def _problems(config: Config) -> list[Problem]:
    """Every section's cross-field rules, in the order of the sections in a config file."""
    return (check_listeners(config) + check_routing(config) + check_gateway(config.gateway)
            + check_workers(config) + check_admin(config.admin) + check_relay(config.relay)
            + check_collector(config.gc))


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


def _resolve_paths(config: Config, base: Path) -> Config:
    """Make certificate, CA, key and socket paths relative to the config file's directory."""

    def fix(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    def fix_cert(cert: Certificate) -> Certificate:
        return replace(cert, cert=base / cert.cert, key=base / cert.key)  # `/` keeps absolute paths

    listeners = tuple(replace(lst, certificates=tuple(fix_cert(c) for c in lst.certificates))
                      for lst in config.listeners)
    upstreams = {name: replace(up, ca_file=fix(up.ca_file),
                               client_cert=None if up.client_cert is None else fix_cert(up.client_cert),
                               auth=resolve_auth_paths(up.auth, base))
                 for name, up in config.upstreams.items()}
    gateway = config.gateway
    if gateway is not None:
        store = gateway.store
        if "://" not in store and not Path(store).is_absolute():
            store = str(base / store)
        gateway = replace(gateway, store=store, key_file=fix(gateway.key_file))
    admin = config.admin
    if admin is not None:
        admin = replace(admin, socket=fix(admin.socket))
    return replace(config, listeners=listeners, upstreams=upstreams, gateway=gateway, admin=admin)
