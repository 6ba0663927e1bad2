"""Connection limits: per listener and per client IP (counted while a connection is open)."""

from __future__ import annotations

from collections import Counter


class ConnectionLimiter:
    """Admission control for one listener. `admit()` returns the name of the limit hit, or None
    and counts the connection; `release()` undoes a successful admit."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def admit(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        if self.total >= max_total:
            return "max_connections"
        if self.per_ip[ip] >= max_per_ip:
            return "max_connections_per_ip"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
