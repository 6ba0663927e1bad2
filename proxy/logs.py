"""Structured logging to stderr: `ts level event key=value ...` or one JSON object per line.

Every log call names an event and passes fields; `sanitize()` makes remote text safe to log
(printable ASCII only, truncated), the way Dovecot's str_sanitize() does.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "mailproxy"
_SAFE = bytes(range(0x20, 0x7F))
_TRANSLATE = bytes(b if b in _SAFE else ord("?") for b in range(256))


def sanitize(text: bytes | str, limit: int = 160) -> str:
    """Printable ASCII only, at most `limit` characters (with an ellipsis when cut)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    cut = len(text) > limit
    clean = text[:limit].translate(_TRANSLATE).decode("ascii")
    return clean + "..." if cut else clean


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = {**_context, **getattr(record, "fields", {})}
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname, f"event={record.getMessage()}"]
        for key, value in fields.items():
            value = str(value)
            if not value or not value.isprintable() or any(c in value for c in ' "='):
                value = json.dumps(value)
            parts.append(f"{key}={value}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "event": record.getMessage(),
        }
        doc.update(_context)
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


_context: dict[str, Any] = {}  # fields on every line of this process (a worker's `worker=N`)


def setup(fmt: str = "text", level: str = "INFO", **context: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    _context.clear()
    _context.update(context)


_logger = logging.getLogger(LOGGER_NAME)


def enabled(level: int = logging.INFO) -> bool:
    """Whether an event at `level` would be written: callers on a per-session path check it
    before building the fields of a line that the configured level drops."""
    return _logger.isEnabledFor(level)


def event(name: str, level: int = logging.INFO, /, exc_info: Any = None, **fields: Any) -> None:
    """Log one event with fields. Callers pass only safe values (see sanitize())."""
    if _logger.isEnabledFor(level):
        _logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)
