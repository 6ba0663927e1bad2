"""A worker process: `python -m proxy.workers.child FD`, started by the supervisor (supervisor.py).

It reads its start message from FD (its end of the control channel: the config, the listening
sockets it inherited, its index and log settings), then runs the ordinary `App` with three
differences (`WorkerApp`): it accepts on the inherited sockets instead of binding, serves no
HTTP, admin or upstream checks (the supervisor does, once), and takes its orders from the
channel: `metrics` (a snapshot of its registry), `who`, `kick`, `reload` (a config the supervisor
validated), `drain`, `hosts` (the supervisor's health checks of pool hosts). It drains when told
to, on SIGTERM, or when the channel closes (the supervisor is gone: no worker outlives it), and
sends a final metrics snapshot as it exits.
SIGINT is ignored (a terminal's Ctrl-C reaches the whole process group; the supervisor decides)
and SIGHUP reloads the config file, as in a single process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import trio

from .. import logs
from ..admin import LocalAdmin
from ..app import App
from ..config import Config, Listener
from ..preflight import startup_failure
from .aggregate import snapshot
from .channel import Channel, ChannelClosed, encode, read_blocking, unpickled


class WorkerApp(App):
    """`App` on inherited sockets, driven by the supervisor's channel."""

    def __init__(self, config: Config, config_path: str | None, channel: Channel,
                 listeners: dict[str, list[int]]):
        super().__init__(config, config_path)
        self.channel = channel
        self.listener_fds = listeners
        self.stop = trio.Event()
        self.admin = LocalAdmin(lambda: list(self.open_sessions.sessions), self.reload)

    async def _start_services(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._serve_channel)
        await nursery.start(self._signals_for_life)

    async def _bind(self, index: int, listener: Listener) -> list[trio.SocketListener]:
        return [trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
                for fd in self.listener_fds[listener.name]]

    async def _ready(self) -> None:
        logs.event("worker_ready", pid=os.getpid())
        try:
            await self.channel.send({"event": "ready", "pid": os.getpid()})
        except ChannelClosed:
            self.stop.set()

    async def _wait_for_stop(self) -> None:
        await self.stop.wait()

    async def _stopped(self) -> None:
        try:
            await self.channel.send({"event": "final", "metrics": snapshot(self.metrics.registry)})
        except ChannelClosed:
            pass

    async def _signals_for_life(self, *, task_status: trio.TaskStatus[None]
                                = trio.TASK_STATUS_IGNORED) -> None:
        """SIGTERM drains, SIGHUP reloads, for the whole life of the process (a second SIGTERM
        during the drain must not kill it)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    self.stop.set()

    async def _serve_channel(self) -> None:
        try:
            while True:
                message = await self.channel.receive()
                result = self._answer(message["op"], message)
                await self.channel.send({"id": message["id"], "result": result})
        except ChannelClosed:
            if not self.stop.is_set():
                logs.event("supervisor_gone")
                self.stop.set()

    def _answer(self, op: str, message: dict[str, Any]) -> Any:
        if op == "metrics":
            return snapshot(self.metrics.registry)
        if op == "who":
            return self.admin.who_now()
        if op == "kick":
            return self.admin.kick_now(message.get("user"), message.get("ip"))
        if op == "reload":
            return self.apply(unpickled(message["config"]))
        if op == "drain":
            self.stop.set()
            return None
        if op == "hosts":   # the supervisor's health checker on pool hosts (health.py)
            for upstream, host, protocol, up, valid_for in message["states"]:
                self.health.hosts.record(str(upstream), str(host), str(protocol), bool(up),
                                         float(valid_for))
            return None
        raise ValueError(f"unknown op {op!r}")  # a bug in the supervisor


def main(argv: list[str]) -> int:
    channel_socket = socket.socket(fileno=int(argv[0]))
    start = read_blocking(channel_socket)
    config = unpickled(start["config"])
    logs.setup(start["log_format"], start["log_level"], worker=start["worker"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listeners = {name: list(fds) for name, fds in start["listeners"].items()}

    async def run() -> None:
        await WorkerApp(config, start["config_path"], Channel(channel_socket), listeners).run()

    try:
        trio.run(run)
    except BaseException as exc:
        failure = startup_failure(exc, config)
        if failure is None:
            raise
        message, status = failure
        try:  # the supervisor says it, once for all workers
            channel_socket.sendall(encode({"event": "failed", "message": message,
                                           "status": status}))
        except OSError:
            print(f"{start['config_path']}: {message}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
