"""User -> upstream (first matching route wins) and how a user appears in logs."""

from __future__ import annotations

import hashlib
import hmac
import os

from ..config import Config, Logging, Upstream

_PROCESS_SALT = os.urandom(16)


def route(config: Config, user: str) -> tuple[str, Upstream] | None:
    name = config.route(user)
    if name is None:
        return None
    return name, config.upstreams[name]


def log_user(logging_cfg: Logging, user: str | None) -> str:
    """The user as logged: full, domain only, or a keyed hash (stable with `hash_key`)."""
    if user is None:
        return "-"
    if logging_cfg.user == "full":
        return _printable(user)
    if logging_cfg.user == "domain":
        return "*@" + _printable(user.rpartition("@")[2]) if "@" in user else "*"
    key = logging_cfg.hash_key.value if logging_cfg.hash_key else _PROCESS_SALT
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()[:16]


def _printable(text: str, limit: int = 160) -> str:
    """Client-chosen text for a log: non-printable characters (DEL, C1 controls, ...) as "?",
    at most `limit` characters. Unlike logs.sanitize() it keeps printable non-ASCII (UTF-8 names)."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + "..." if len(text) > limit else clean
