"""Connection limits: per listener and per client IP (counted while a connection is open)."""

from __future__ import annotations

import threading
from collections import Counter


class ConnectionLimiter:
    """Admission control for one listener. `admit()` returns the name of the limit hit, or None
    and counts the connection; `release()` undoes a successful admit. Thread-safe: the relay
    engine's thread admits and releases the connections it accepts itself, trio's the others."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        with self._lock:
            if self.total >= max_total:
                return "max_connections"
            if self.per_ip[ip] >= max_per_ip:
                return "max_connections_per_ip"
            self.total += 1
            self.per_ip[ip] += 1
            return None

    def release(self, ip: str) -> None:
        with self._lock:
            self.total -= 1
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
