"""The configured lookups, asked in order, with their caches; and where an answer sends a login.

`Lookups.decide(query)` returns the first answer (a Target or a Refusal) or None when no lookup
knows the user (the static `routes:` decide then). A lookup that is down raises
LookupUnavailable: the login is answered with a tempfail rather than routed by a lower rule,
so an outage of the directory never sends users to a default backend. Each lookup asked is
counted (mailproxy_lookups_total by kind, result and cache hit; the time of a miss in
mailproxy_lookup_duration_seconds).

`upstream_for(config, lookup_name, target, protocol)` turns a Target into the (name, Upstream)
the login path connects to: a configured upstream when the target names one (or names one of
its hosts and its port), else the lookup's `upstream:` settings (TLS, verification, client IP
forwarding) with the target's host and port, under the lookup's name (a bounded metric label).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import trio

from .. import logs
from ..config import Config, HttpLookupEntry, ImapService, Pop3Service, Upstream
from ..metrics import Metrics
from .answers import Answer, LoginQuery, Lookup, LookupUnavailable, Refusal, Target
from .cache import AnswerCache
from .http_lookup import HttpLookup
from .ldap_lookup import LdapLookup


def build(config: Config) -> list[tuple[Lookup, AnswerCache]]:
    """One lookup object and its cache per `lookups:` entry, in order."""
    built: list[tuple[Lookup, AnswerCache]] = []
    upstream_names = frozenset(config.upstreams)
    for entry in config.lookups:
        lookup: Lookup = (HttpLookup(entry.http) if isinstance(entry, HttpLookupEntry)
                          else LdapLookup(entry.ldap, upstream_names))
        built.append((lookup, AnswerCache(entry.lookup.cache)))
    return built


class Lookups:
    def __init__(self, config: Config, lookups: list[tuple[Lookup, AnswerCache]] | None = None,
                 metrics: Metrics | None = None):
        self.config = config
        self.lookups = build(config) if lookups is None else lookups
        self.metrics = metrics

    def __bool__(self) -> bool:
        return bool(self.lookups)

    async def decide(self, query: LoginQuery) -> tuple[str, Answer] | None:
        """(lookup name, answer) from the first lookup that answers, or None. Raises
        LookupUnavailable (its detail names the lookup)."""
        for lookup, cache in self.lookups:
            key = cache.key(query)
            answer = cache.get(key)
            if answer is not None:
                self._count(lookup, answer, "hit")
                return lookup.name, answer
            started = time.monotonic()
            try:
                answer = await lookup.ask(query)
            except LookupUnavailable as exc:
                self._count(lookup, None, "miss", started, "unavailable")
                logs.event("lookup_error", logging.WARNING, lookup=lookup.name,
                           detail=exc.detail)
                raise LookupUnavailable(f"{lookup.name}: {exc.detail}") from None
            self._count(lookup, answer, "miss", started)
            if answer is not None:
                cache.put(key, answer)
                return lookup.name, answer
        return None

    def _count(self, lookup: Lookup, answer: Answer | None, cache: str,
               started: float | None = None, result: str | None = None) -> None:
        if self.metrics is None:
            return
        if result is None:
            result = ("pass" if answer is None else
                      "refuse" if isinstance(answer, Refusal) else "route")
        self.metrics.lookups.labels(lookup.kind, result, cache).inc()
        if started is not None:
            self.metrics.lookup_duration.labels(lookup.kind).observe(time.monotonic() - started)

    async def aclose(self) -> None:
        for lookup, _ in self.lookups:
            await lookup.aclose()

    async def aclose_after(self, delay: float) -> None:
        """Close the clients (HTTP connection pools, LDAP connections) once `delay` has passed:
        a replaced config's lookups, after the longest login timeout, so no login still running
        under the old config loses its lookup (shielded: the process stopping closes them)."""
        try:
            await trio.sleep(delay)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()


def _template(config: Config, lookup_name: str) -> Upstream | None:
    for entry in config.lookups:
        if entry.lookup.name == lookup_name and entry.lookup.upstream is not None:
            return config.upstreams[entry.lookup.upstream]
    return None


def upstream_for(config: Config, lookup_name: str, target: Target,
                 protocol: str) -> tuple[str, Upstream]:
    """Where `target` (a lookup's answer) sends a login; see the module docstring. Raises
    LookupUnavailable when the answer names no port and the lookup has no `upstream:` with
    one for the protocol."""
    if target.upstream is not None and target.host is None:
        return target.upstream, config.upstreams[target.upstream]
    assert target.host is not None
    template = _template(config, lookup_name)
    template_service = None if template is None else (
        template.imap if protocol == "imap" else template.pop3)
    port = target.port or (template_service.port if template_service is not None else None)
    if port is None:
        raise LookupUnavailable(f"{lookup_name}: no port for {protocol} (set upstream:)")
    for name, upstream in config.upstreams.items():
        service = upstream.imap if protocol == "imap" else upstream.pop3
        if service is not None and service.port == port and target.host in upstream.pool:
            # one of its hosts: that host only (the directory chose it), with its settings
            return name, replace(upstream, host=target.host, hosts=())
    service = (replace(template_service, port=port) if template_service is not None
               else ImapService(port=port) if protocol == "imap" else Pop3Service(port=port))
    base = template if template is not None else Upstream(host=target.host)
    services = {"imap": None, "pop3": None, protocol: service}
    upstream = replace(base, host=target.host, hosts=(), **services)  # type: ignore[arg-type]
    return lookup_name, upstream


@dataclass(frozen=True)
class Destination:
    """Log in at `upstream` (named `name` in logs and metrics), as `user` with `password` when
    a lookup rewrote them."""

    name: str
    upstream: Upstream
    user: str | None = None
    password: bytes | None = None

    def credentials(self, creds: Any) -> Any:
        """The client's credentials (a proxy.relay.sasl.Credentials) after the rewrite."""
        if self.user is None and self.password is None:
            return creds
        return replace(creds, user=self.user or creds.user,
                       password=creds.password if self.password is None else self.password)


async def destination(config: Config, lookups: Lookups | None,
                      query: LoginQuery) -> Destination | Refusal | None:
    """Where a login goes: the first lookup's answer, else the first matching route; None when
    nothing matches. Raises LookupUnavailable."""
    decided = await lookups.decide(query) if lookups else None
    if decided is None:
        name = config.route(query.user)
        return None if name is None else Destination(name, config.upstreams[name])
    lookup_name, answer = decided
    if isinstance(answer, Refusal):
        return answer
    name, upstream = upstream_for(config, lookup_name, answer, query.protocol)
    return Destination(name, upstream, answer.user, answer.password)


def tls_settings(config: Config) -> dict[str, Upstream]:
    """Upstream settings by the names sessions connect under: the upstreams, and each lookup
    with an `upstream:` (hosts it names use those TLS settings, under the lookup's name)."""
    named = dict(config.upstreams)
    for entry in config.lookups:
        if entry.lookup.upstream is not None:
            named[entry.lookup.name] = config.upstreams[entry.lookup.upstream]
    return named
