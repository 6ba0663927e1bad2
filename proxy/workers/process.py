"""The supervisor's handle on one worker slot: spawn its process, talk to it, watch it exit.

A worker is `python -m proxy.workers.child FD`: FD is its end of the control socketpair
(channel.py); the listening sockets follow as inherited descriptors named in the start message,
with the config (the one the supervisor validated last, so a restarted worker never reads a file
edited since) and the log settings. Requests are one at a time per worker (a lock), each bounded
by REQUEST_TIMEOUT; a worker that exits fails the request in flight with WorkerGone.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import trio

from .. import logs
from .channel import Channel, ChannelClosed, pickled

if TYPE_CHECKING:
    from ..config import Config

REQUEST_TIMEOUT = 5.0   # the admin endpoint answers within its own 10 s
EOF_WAIT = 1.0   # after the process exited, for its last messages (a startup failure)


class WorkerGone(Exception):
    """The worker exited (or stopped answering) before it answered."""


@dataclass(frozen=True)
class LogSettings:
    """The `--log-format` and `--log-level` the workers log with (the supervisor's own)."""

    format: str = "text"
    level: str = "INFO"


class Worker:
    """Slot `index`: at most one process at a time. `ready` is set once the current process
    accepts connections; `on_event(worker, message)` receives what it sends on its own."""

    def __init__(self, index: int, on_event: Callable[[Worker, dict[str, Any]], None]):
        self.index = index
        self.on_event = on_event
        self.pid: int | None = None
        self.ready = False
        self.failure: tuple[str, int] | None = None   # (message, status) of a failed start
        self.channel: Channel | None = None
        self._lock = trio.Lock()
        self._next_id = 0
        self._reply: dict[str, Any] | None = None
        self._replied = trio.Event()

    async def run(self, config: Config, config_path: str | None, listeners: dict[str, list[int]],
                  log: LogSettings) -> int:
        """Start a process, serve its messages until it exits; its exit status (negative: the
        signal that ended it). Cancelled, it kills the process first: no worker outlives the
        supervisor's run."""
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(fd for group in listeners.values() for fd in group)]
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "proxy.workers.child", str(theirs.fileno())],
                pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.pid, self.ready, self.failure = process.pid, False, None
        self.channel = Channel(ours)
        logs.event("worker_started", worker=self.index, pid=process.pid)
        try:
            await self.channel.send({"worker": self.index, "config": pickled(config),
                                     "config_path": config_path, "listeners": listeners,
                                     "log_format": log.format, "log_level": log.level})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                status = await process.wait()
                nursery.cancel_scope.deadline = trio.current_time() + EOF_WAIT
            return status
        except ChannelClosed:
            return await process.wait()
        finally:
            self.ready = False
            self._fail_request()
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await self.channel.aclose()
                self.channel = None

    async def _read(self) -> None:
        """Until the channel closes (the process exited, or is about to)."""
        assert self.channel is not None
        try:
            while True:
                message = await self.channel.receive()
                if "id" in message:
                    if message["id"] == self._next_id:
                        self._reply = message
                        self._replied.set()
                else:
                    if message.get("event") == "ready":
                        self.ready = True
                    elif message.get("event") == "failed":
                        self.failure = (str(message["message"]), int(message["status"]))
                    self.on_event(self, message)
        except ChannelClosed:
            self._fail_request()  # the process exits: run() returns on its status

    def _fail_request(self) -> None:
        self._reply = None
        self._replied.set()

    async def request(self, op: str, **arguments: Any) -> Any:
        """Ask the worker; its result. Raises WorkerGone when it is not running, exits or does
        not answer within REQUEST_TIMEOUT."""
        async with self._lock:
            channel = self.channel
            if channel is None:
                raise WorkerGone
            self._next_id += 1
            self._reply, self._replied = None, trio.Event()
            try:
                await channel.send({"id": self._next_id, "op": op, **arguments})
            except ChannelClosed:
                raise WorkerGone from None
            with trio.move_on_after(REQUEST_TIMEOUT):
                await self._replied.wait()
            if self._reply is None:
                raise WorkerGone
            return self._reply.get("result")

