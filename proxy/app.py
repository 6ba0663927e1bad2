"""The process: one nursery holding the listeners, the metrics/health server, the upstream health
checker and the signal handlers (SIGHUP reload, SIGTERM/SIGINT drain)."""

from __future__ import annotations

import logging
import signal
from contextlib import asynccontextmanager

import trio

from . import __version__, collector, logs
from . import config as config_mod
from .admin import AdminApi, LocalAdmin, serve_admin, serve_admin_socket
from .config import Admin, Config, ImapService, Listener
from .health import Health, check_upstreams
from .metrics import Metrics
from .net.http import serve_http
from .net.throttle import Throttle
from .net.tls import TLSConfigError
from .oauth2 import Brokers
from .preflight import bind_error, certificate_expiries
from .relay.upstream_pool import OUTCOMES as REUSE_OUTCOMES
from .relay.warm_fill import keep_warm
from .session.connect_early import EARLY_RESULTS, early_targets
from .session.context import Drain, Runtime
from .session.failures import Failure
from .session.serve import EngineAccept, ListenerServer, OpenSessions


def _handlers(gateway) -> dict:
    from .relay import imap_session, pop3_session

    handlers = {("imap", "relay"): imap_session.handle, ("pop3", "relay"): pop3_session.handle}
    if gateway is not None:
        handlers[("imap", "gateway")] = gateway.handle
    return handlers


def _in_engine(listener: Listener) -> EngineAccept | None:
    """How the relay engine's thread accepts on an IMAP relay listener (it checks the rest at
    each accept: relay/engine_accept.py); None for the others."""
    if (listener.protocol, listener.mode) != ("imap", "relay"):
        return None
    from .relay.engine_accept import accept_in_engine

    return accept_in_engine


@asynccontextmanager
async def _maybe_gateway(config: Config, metrics, oauth2: Brokers):
    """The gateway service (store, fetchers) when a listener has `mode: gateway`."""
    if not any(lst.mode == "gateway" for lst in config.listeners):
        yield None
        return
    from .gateway.service import open_gateway

    async with open_gateway(config, metrics, oauth2) as service:
        yield service


class App:
    def __init__(self, config: Config, config_path: str | None):
        self.config_path = config_path
        # Counted even without a `metrics:` section (then nothing serves them): the hot paths
        # count in batches, so a registry nobody reads costs next to nothing.
        self.metrics = Metrics()
        self.health = Health()
        self.health.publish(self.metrics)
        self._init_series(config)
        self.drain_event = Drain()
        self.throttle = Throttle(config.auth_throttle, trio.current_time)
        self.oauth2 = Brokers(self.metrics)   # access token caches, kept across reloads
        self.runtime = Runtime.build(config, self.metrics, drain=self.drain_event,
                                     throttle=self.throttle, host_health=self.health.hosts,
                                     oauth2=self.oauth2)
        self.servers: list[ListenerServer] = []
        self._services: trio.Nursery | None = None   # the process's own tasks, once running
        self.open_sessions = OpenSessions()

    def _init_series(self, config: Config) -> None:
        """Known label combinations exist at 0 from the start (and after a reload)."""
        self.metrics.certificate_expiry.clear()
        for name, path, expiry in certificate_expiries(config):
            self.metrics.certificate_expiry.labels(name, path).set(expiry)
        for listener in config.listeners:
            self.metrics.init_listener(listener.name, listener.protocol, listener.tls)
        for name, upstream in config.upstreams.items():
            for protocol in ("imap", "pop3"):
                if getattr(upstream, protocol) is not None:
                    self.metrics.init_upstream(name, protocol, Failure.labels())
        for name, upstream in config.upstreams.items():
            if isinstance(upstream.imap, ImapService) and upstream.imap.reuse is not None:
                for outcome in REUSE_OUTCOMES:
                    self.metrics.upstream_reuse.labels(name, outcome)
        for protocol, target in early_targets(config).items():
            for result in EARLY_RESULTS:
                self.metrics.upstream_early.labels(target.name, protocol, result)

    async def run(self) -> None:
        config = self.runtime.config
        async with _maybe_gateway(config, self.metrics, self.oauth2) as gateway, \
                trio.open_nursery() as nursery:
            self._services = nursery
            handlers = _handlers(gateway)
            self.servers = [ListenerServer(lst.name, lambda: self.runtime,
                                           handlers[(lst.protocol, lst.mode)], self.open_sessions,
                                           in_engine=_in_engine(lst))
                            for lst in config.listeners]
            await self._start_services(nursery)
            nursery.start_soon(keep_warm, self.runtime)
            async with trio.open_nursery() as sessions:
                async with trio.open_nursery() as listeners:
                    bound = [await self._bind(i, listener)
                             for i, listener in enumerate(config.listeners)]
                    # start-up done, no session accepted yet (clients wait in the backlog): freeze
                    collector.set_up(config.gc, startup=True)
                    for server, sockets in zip(self.servers, bound, strict=True):
                        await listeners.start(server.serve, sockets, sessions)
                    self.health.listeners_bound = True
                    await self._ready()
                    await self._wait_for_stop()
                    listeners.cancel_scope.cancel()  # stop accepting
                await self._drain(sessions.cancel_scope)
            await self._stopped()
            nursery.cancel_scope.cancel()
        logs.event("stopped")

    # -- what a worker process (proxy/workers/child.py) does differently ---------------------

    async def _start_services(self, nursery: trio.Nursery) -> None:
        """The metrics/health HTTP server, the admin endpoint and the upstream checker."""
        config = self.runtime.config
        if config.metrics is not None:
            try:
                await nursery.start(serve_http, config.metrics.address, self.metrics, self.health)
            except OSError as exc:
                raise bind_error("metrics.address", config.metrics.address, exc) from None
        if config.admin is not None:
            await start_admin(nursery, config.admin,
                              LocalAdmin(lambda: list(self.open_sessions.sessions), self.reload))
        nursery.start_soon(check_upstreams, lambda: self.runtime.config, self.health,
                           self.metrics)

    async def _bind(self, index: int, listener: Listener) -> list[trio.SocketListener]:
        return await bind_listener(index, listener)

    async def _ready(self) -> None:
        logs.event("ready", version=__version__, listeners=len(self.servers))

    async def _wait_for_stop(self) -> None:
        await self._signals()

    async def _stopped(self) -> None:
        """After the drain, before the process's services stop."""

    async def _signals(self) -> None:
        """Until SIGTERM or SIGINT; SIGHUP reloads."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    return
                self.reload()

    def reload(self) -> list[str]:
        """SIGHUP: re-read and validate the config; new connections get it, sessions keep theirs.
        Returns the errors that kept the old config (empty when reloaded)."""
        if self.config_path is None:
            return ["no config file to reload"]
        try:
            config = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            logs.event("reload_rejected", logging.ERROR, errors="; ".join(exc.errors))
            return exc.errors
        return self.apply(config)

    def apply(self, config: Config) -> list[str]:
        """Serve new connections with `config` (validated) from now on; the errors that kept
        the old config (empty when applied)."""
        try:
            runtime = Runtime.build(config, self.metrics, drain=self.drain_event,
                                    throttle=self.throttle, host_health=self.health.hosts,
                                    oauth2=self.oauth2)
        except TLSConfigError as exc:
            logs.event("reload_rejected", logging.ERROR, errors=str(exc))
            return [str(exc)]
        why = restart_needed(self.runtime.config, config)
        if why is not None:
            logs.event("reload_rejected", logging.ERROR, errors=why)
            return [why]
        old, self.runtime = self.runtime, runtime
        for server in self.servers:
            server.forget_runtime()   # the old one lives on only in its sessions
        old.warm_pools.close()   # its filler ends; the new runtime's pools start empty
        if runtime.warm_pools and self._services is not None:
            self._services.start_soon(keep_warm, runtime)
        if old.lookups is not None and self._services is not None:
            # closed once no login can still be asking them (its `login` timeout)
            delay = max((lst.timeouts.login for lst in old.config.listeners), default=0.0)
            self._services.start_soon(old.lookups.aclose_after, delay)
        self.throttle.config = config.auth_throttle
        collector.set_up(config.gc, startup=False)
        self.oauth2.keep_only(config)
        self._init_series(config)
        logs.event("reloaded", routes=len(config.routes), upstreams=len(config.upstreams))
        return []

    async def _drain(self, sessions: trio.CancelScope) -> None:
        """SIGTERM: not ready at once, sessions told to finish (IMAP: BYE after the current
        command, at once when idle), then cut at shutdown_timeout."""
        self.health.draining = True
        logs.event("draining", sessions=len(self.open_sessions))
        self.drain_event.set()
        with trio.move_on_after(self.runtime.config.shutdown_timeout):
            await self.open_sessions.wait_none()
        if self.open_sessions:
            logs.event("drain_timeout", logging.WARNING, sessions=len(self.open_sessions))
        sessions.cancel()


async def start_admin(nursery: trio.Nursery, admin: Admin, api: AdminApi) -> None:
    """The admin endpoint on `admin.address` and/or `admin.socket`, serving `api`."""
    if admin.address is not None:
        try:
            await nursery.start(serve_admin, admin, api)
        except OSError as exc:
            raise bind_error("admin.address", admin.address, exc) from None
    if admin.socket is not None:
        try:
            await nursery.start(serve_admin_socket, admin, api)
        except OSError as exc:
            raise bind_error("admin.socket", admin.socket, exc) from None


async def bind_listener(index: int, listener: Listener) -> list[trio.SocketListener]:
    """The sockets of `config.listeners[index]`, bound and listening (every address its host
    resolves to). Raises StartupError (one line) when it cannot be bound."""
    try:
        sockets = await trio.open_tcp_listeners(listener.address.port, host=listener.address.host)
    except OSError as exc:
        raise bind_error(f"listeners[{index}].address", listener.address, exc) from None
    logs.event("listening", listener=listener.name, protocol=listener.protocol,
               mode=listener.mode, tls=listener.tls,
               address=f"{listener.address.host}:{sockets[0].socket.getsockname()[1]}")
    return sockets


def restart_needed(old: Config, new: Config) -> str | None:
    """Why `new` cannot be applied by a reload, or None."""
    before = {(x.name, x.protocol, x.mode, x.address) for x in old.listeners}
    after = {(x.name, x.protocol, x.mode, x.address) for x in new.listeners}
    if before != after:
        return "listener names, protocols, modes and addresses need a restart"
    return None


async def serve(config: Config, config_path: str | None = None) -> None:
    await App(config, config_path).run()
