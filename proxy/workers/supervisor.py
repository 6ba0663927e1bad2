"""The supervisor of `workers: N` (N > 1): the process an operator starts, signals and scrapes.

Theory of operation: the supervisor binds every listener once, then starts N worker processes
(child.py) that inherit the listening sockets and accept on them, each with its own event loop,
sessions and registry. Inherited sockets rather than SO_REUSEPORT: one bind, so a port in use or
a privileged port fails once, at start, in one line, and a second mailproxy started by mistake
fails instead of silently sharing the port (SO_REUSEPORT lets any process of the same user join
the group); one accept queue, so a worker's death or restart loses no queued connection (with
SO_REUSEPORT, the connections waiting in a dead socket's queue are reset), and an idle worker
takes the next connection instead of a hash of the client's address picking a busy one. The PROXY
protocol, TLS and everything after accept() are unchanged: a worker is the single process.

The supervisor serves, once for all workers: `/metrics` (aggregate.py merges the workers'
registries at each scrape), `/healthz`, `/readyz` (ready while not draining, at least one worker
accepts and an upstream answers: its own upstream checker runs once, not once per worker) and
the admin endpoint (`who` and `kick` ask every worker, `reload` reloads all); the checker's
verdicts on pool hosts are sent to every worker after each round (`publish_hosts`). A worker that exits
unexpectedly is started again at once, then with a growing delay (RESTART_BACKOFF) while it keeps
dying young; during the first start, a worker that exits before it is ready stops the whole
process with its error. SIGHUP (or admin reload) validates the file as check-config does and
sends the new config to every worker; SIGTERM/SIGINT stop restarts, turn `/readyz` to 503, close
the supervisor's copies of the listening sockets and tell every worker to drain; a worker still
running `shutdown_timeout` + KILL_GRACE later is killed.
"""

from __future__ import annotations

import logging
import signal
from functools import partial
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from .. import __version__, logs
from .. import config as config_mod
from ..app import bind_listener, restart_needed, start_admin
from ..config import Config
from ..health import Health, HostCheck, check_upstreams
from ..metrics import Metrics, WorkerMetrics
from ..net.http import serve_http
from ..preflight import StartupError, bind_error, file_problems
from .aggregate import COLLECT_INTERVAL, Aggregate
from .channel import pickled
from .count import resolve
from .process import LogSettings, Worker, WorkerGone

KILL_GRACE = 5.0             # seconds past shutdown_timeout before a draining worker is killed
RESTART_BACKOFF = (0.5, 30.0)  # first and largest delay before restarting a worker that died young
COLLECT_TIMEOUT = 5.0        # a scrape waits this long for a worker's snapshot (its own is 10 s)
STABLE_AFTER = 30.0          # a worker that ran this long restarts without delay


class WorkersHealth:
    """`/readyz` for the supervisor: not draining, a worker ready, an upstream reachable."""

    def __init__(self, workers: list[Worker], upstreams: Health):
        self.workers = workers
        self.upstreams = upstreams
        self.draining = False

    @property
    def local_not_ready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        if not any(worker.ready for worker in self.workers):
            return "no worker ready"
        return None

    @property
    def not_ready_reason(self) -> str | None:
        reason = self.local_not_ready_reason
        if reason is None and not any(self.upstreams.upstream_ok.values()):
            return "no upstream reachable"
        return reason


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, count: int, log: LogSettings):
        self.config = config
        self.config_path = config_path
        self.log = log
        self.metrics = Metrics()
        self.worker_metrics = WorkerMetrics(self.metrics.registry)
        self.worker_metrics.workers.set(count)
        self.workers = [Worker(i, self._on_event) for i in range(count)]
        self.health = WorkersHealth(self.workers, Health())
        self.metrics.draining.set_function(lambda: 1.0 if self.health.draining else 0.0)
        self.aggregate = Aggregate(self.metrics.registry)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.aggregate)
        self.stopping = False
        self._stop = trio.Event()   # set with `stopping`: ends a restart delay
        self.started = False
        self.sockets: list[trio.SocketListener] = []
        self._ready_changed = trio.Event()

    # -- run ------------------------------------------------------------------------------------

    async def run(self) -> None:
        config = self.config
        fds: dict[str, list[int]] = {}
        for i, listener in enumerate(config.listeners):
            bound = await bind_listener(i, listener)
            self.sockets += bound
            fds[listener.name] = [sock.socket.fileno() for sock in bound]
        async with trio.open_nursery() as nursery:
            await self._start_services(nursery)
            async with trio.open_nursery() as slots:
                for worker in self.workers:
                    slots.start_soon(self._keep_running, worker, fds)
                while not all(worker.ready for worker in self.workers):
                    await self._ready_changed.wait()
                self.started = True
                logs.event("ready", version=__version__, listeners=len(config.listeners),
                           workers=len(self.workers))
                await self._signals()
                await self._drain(slots.cancel_scope)
            nursery.cancel_scope.cancel()
        logs.event("stopped")

    async def _start_services(self, nursery: trio.Nursery) -> None:
        config = self.config
        if config.metrics is not None:
            try:
                await nursery.start(partial(serve_http, refresh=self.collect),
                                    config.metrics.address, self, self.health)
            except OSError as exc:
                raise bind_error("metrics.address", config.metrics.address, exc) from None
        if config.admin is not None:
            await start_admin(nursery, config.admin, WorkersAdmin(self))
        nursery.start_soon(partial(check_upstreams, lambda: self.config, self.health.upstreams,
                                   self.metrics, publish=self.publish_hosts))
        nursery.start_soon(self._collect_periodically)

    async def _keep_running(self, worker: Worker, fds: dict[str, list[int]]) -> None:
        """Run slot `worker` until the supervisor stops, restarting its process when it exits."""
        delay: float | None = None
        while not self.stopping:
            began = trio.current_time()
            status = await worker.run(self.config, self.config_path, fds, self.log)
            self.aggregate.retire(worker.index)
            self._ready_changed_now()
            if self.stopping:
                logs.event("worker_exited", worker=worker.index, status=status)
                return
            failure = worker.failure
            if not self.started:
                if failure is not None:
                    raise StartupError(failure[0], failure[1])
                raise StartupError(f"worker {worker.index} exited with status {status} before "
                                   f"it was ready")
            delay = restart_delay(delay, trio.current_time() - began)
            logs.event("worker_exited", logging.ERROR, worker=worker.index, status=status,
                       restart_in=delay, **({"error": failure[0]} if failure else {}))
            self.worker_metrics.worker_restarts.inc()
            with trio.move_on_after(delay):
                await self._stop.wait()

    def _on_event(self, worker: Worker, message: dict[str, Any]) -> None:
        if message.get("event") == "final":
            self.aggregate.update(worker.index, message["metrics"])
        self._ready_changed_now()

    def _ready_changed_now(self) -> None:
        self.worker_metrics.workers_ready.set(sum(w.ready for w in self.workers))
        self._ready_changed.set()
        self._ready_changed = trio.Event()

    async def publish_hosts(self, checks: list[HostCheck]) -> None:
        """The checker's verdicts on pool hosts, into every running worker's own record
        (sessions pick hosts there): without them a worker would learn that a host is down
        only from a failed connect of its own, and never that a host greeting badly is."""
        states = [[c.upstream, c.host, c.protocol, c.up, c.valid_for] for c in checks]

        async def one(worker: Worker) -> None:
            try:
                await worker.request("hosts", states=states)
            except WorkerGone:
                pass   # a worker (re)starting now gets the next round's

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)

    # -- metrics --------------------------------------------------------------------------------

    async def collect(self) -> None:
        """Fresh snapshots from every running worker (before each scrape); a worker that does
        not answer within COLLECT_TIMEOUT is shown as of its last snapshot."""
        async def one(worker: Worker) -> None:
            try:
                self.aggregate.update(worker.index, await worker.request("metrics"))
            except WorkerGone:
                pass

        with trio.move_on_after(COLLECT_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(one, worker)

    async def _collect_periodically(self) -> None:
        while True:
            await trio.sleep(COLLECT_INTERVAL)
            await self.collect()

    # -- signals, reload, drain -----------------------------------------------------------------

    async def _signals(self) -> None:
        """Until SIGTERM or SIGINT; SIGHUP reloads."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    return
                await self.reload()

    async def reload(self) -> list[str]:
        """Validate the file as check-config does, then send it to every worker. The errors
        (empty when every worker took it)."""
        if self.config_path is None:
            return ["no config file to reload"]
        try:
            config = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            errors = exc.errors
        else:
            errors = file_problems(config)
            why = restart_needed(self.config, config) or _workers_changed(self.config, config)
            errors += [why] if why else []
        if errors:
            logs.event("reload_rejected", logging.ERROR, errors="; ".join(errors))
            return errors
        self.config = config  # workers started from now on get it
        text = pickled(config)

        async def one(worker: Worker) -> None:
            try:
                errors.extend(await worker.request("reload", config=text))
            except WorkerGone:
                pass  # a worker restarting now starts with the new config

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        if errors:
            logs.event("reload_rejected", logging.ERROR, errors="; ".join(errors))
        else:
            logs.event("reloaded", routes=len(config.routes), upstreams=len(config.upstreams),
                       workers=len(self.workers))
        return errors

    async def _drain(self, slots: trio.CancelScope) -> None:
        self.stopping = True
        self._stop.set()
        self.health.draining = True
        logs.event("draining", workers=len(self.workers))
        for sock in self.sockets:  # once the workers close theirs, new connections are refused
            await sock.aclose()

        async def tell(worker: Worker) -> None:
            try:
                await worker.request("drain")
            except WorkerGone:
                pass

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(tell, worker)
        slots.deadline = trio.current_time() + self.config.shutdown_timeout + KILL_GRACE


def restart_delay(previous: float | None, lived: float) -> float:
    """Seconds before starting again a worker that ran `lived` seconds: none the first time or
    after a stable run, then RESTART_BACKOFF[0] doubling to RESTART_BACKOFF[1] while it keeps
    dying young (`previous`: the last delay, None when there was none)."""
    if previous is None or lived >= STABLE_AFTER:
        return 0.0
    return min(max(2 * previous, RESTART_BACKOFF[0]), RESTART_BACKOFF[1])


def _workers_changed(old: Config, new: Config) -> str | None:
    if resolve(old.workers) != resolve(new.workers):
        return "workers needs a restart"
    return None


class WorkersAdmin:
    """The admin endpoint's verbs over every worker (proxy/admin.py AdminApi)."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    async def _ask(self, op: str, **arguments: Any) -> list[tuple[int, Any]]:
        answers: list[tuple[int, Any]] = []

        async def one(worker: Worker) -> None:
            try:
                answers.append((worker.index, await worker.request(op, **arguments)))
            except WorkerGone:
                pass

        async with trio.open_nursery() as nursery:
            for worker in self.supervisor.workers:
                nursery.start_soon(one, worker)
        return sorted(answers, key=lambda answer: answer[0])

    async def who(self) -> list[dict[str, Any]]:
        return [{**row, "worker": index} for index, rows in await self._ask("who") for row in rows]

    async def kick(self, user: str | None, ip: str | None) -> int:
        return sum(kicked for _, kicked in await self._ask("kick", user=user, ip=ip))

    async def reload(self) -> list[str]:
        return await self.supervisor.reload()
