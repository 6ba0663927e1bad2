"""`workers: N | auto`: N processes serving the same listeners (supervisor.py explains how).

`serve()` is what `mailproxy serve` runs: the single-process app when the config asks for one
worker (the default), else the supervisor and its workers.
"""

from __future__ import annotations

from ..app import serve as serve_one
from ..config import Config
from .count import resolve
from .process import LogSettings

__all__ = ["LogSettings", "resolve", "serve"]


async def serve(config: Config, config_path: str | None = None,
                log: LogSettings | None = None) -> None:
    count = resolve(config.workers)
    if count == 1:
        await serve_one(config, config_path)
        return
    from .supervisor import Supervisor

    await Supervisor(config, config_path, count, log or LogSettings()).run()
