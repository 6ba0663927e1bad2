"""The per-account quota test shared by IMAP (imapd/_quota.py: `NO [OVERQUOTA]`, RFC 9208) and
POP3 ingest (ingest_batches.py: what does not fit stays upstream). `quota` is a `config.GatewayQuota`."""

from __future__ import annotations

from ..store import Usage


def over(quota, usage: Usage, add_bytes: int, add_messages: int) -> bool:
    """Would `usage` plus this much exceed a limit of `quota`?"""
    return ((quota.storage is not None and usage.bytes + add_bytes > quota.storage) or
            (quota.messages is not None and usage.messages + add_messages > quota.messages))


class IngestGate:
    """Admits ingested messages while they fit, in order: after the first one that does not,
    none (so mail is never stored out of order around a gap)."""

    def __init__(self, quota, usage: Usage):
        self.quota, self.usage, self.full = quota, usage, False

    def admit(self, size: int) -> bool:
        if not self.full and over(self.quota, self.usage, size, 1):
            self.full = True
        if self.full:
            return False
        self.usage = Usage(self.usage.bytes + size, self.usage.messages + 1)
        return True
