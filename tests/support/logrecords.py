"""The proxy's own log records, caught in-process: `with caught(logging.WARNING) as records:`
gives the list the "mailproxy" logger fills (level and handler put back at the end)."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from proxy.logs import LOGGER_NAME

__all__ = ["caught"]


@contextlib.contextmanager
def caught(level: int) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append   # type: ignore[method-assign]
    logger = logging.getLogger(LOGGER_NAME)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
