"""What operators run the proxy with: `logging:`, `metrics:`, `auth_throttle:` and `admin:`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import StrictBool, StrictInt

from .values import STRICT, Duration, ListenAddress, SecretValue


@dataclass(frozen=True, slots=True)
class Logging:
    __pydantic_config__ = STRICT
    user: Literal["full", "domain", "hash"] = "full"
    hash_key: SecretValue | None = None  # salt for `user: hash`; random per process otherwise


@dataclass(frozen=True, slots=True)
class Metrics:
    __pydantic_config__ = STRICT
    address: ListenAddress


@dataclass(frozen=True, slots=True)
class AuthThrottle:
    """Failed-login throttling per client IP and per user (proxy/net/throttle.py)."""

    __pydantic_config__ = STRICT
    enabled: StrictBool = True
    base_delay: Duration = 0.5     # delay of the first failure's reply, doubled per failure
    max_delay: Duration = 8.0
    window: Duration = 300.0       # failures older than this are forgotten
    block_after: StrictInt = 10    # failures within the window before refusing an IP, or a user from an IP
    user_block_after: StrictInt = 100   # failures from all IPs before refusing a user everywhere
    block_for: Duration = 300.0


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin HTTP endpoint (proxy/admin.py): off unless configured; bearer token."""

    __pydantic_config__ = STRICT
    address: ListenAddress
    token: SecretValue
