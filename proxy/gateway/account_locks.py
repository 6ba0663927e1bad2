"""Per-account state the gateway's syncs share in one process (gateway/fetcher.py).

One lock per account (at most one sync of it at a time), the listing its last sync left
entirely stored (`settled`), and the messages that failed its syncs (`failures`): a message
too big, or whose RETR timed out, is passed over for a while, so that the mail listed after
it still arrives (RFC 1939 gives a client no other way past a message it cannot read).
"""

from __future__ import annotations

import time

import trio

__all__ = ["PASS_OVER", "STRIKES", "AccountLocks"]

# a message whose RETR timed out or that was too big STRIKES times within PASS_OVER seconds is
# left upstream by the account's syncs until PASS_OVER after the last (AccountLocks.passing_over)
STRIKES = 2
PASS_OVER = 3600.0


class AccountLocks:
    """One lock per account, held while it syncs: at most one sync per account among the
    callers that share this object (the gateway service owns one). It also remembers, per
    account, the UIDL listing that its last sync left entirely stored (`settled`): a sync that
    finds the same listing again has nothing to fetch and, under `keep`, nothing to delete, so
    it skips the store's UIDL reads (every login syncs; at 2,000 messages those reads were most
    of a login's store work and of its garbage)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self.settled: dict[tuple[str, str], tuple[int, bytes]] = {}   # -> (account id, digest)
        # -> {UIDL: (strikes, monotonic time they expire)}: messages whose RETR timed out or
        # that were too big (`passing_over`)
        self.failures: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        # -> message number: where the next sync of a server without UIDL starts (`resume_at`)
        self.resume: dict[tuple[str, str], int] = {}
        # -> UIDLs of rows that left the listing in a sync that did not read every new UIDL
        # (budget, quota), no new UIDL matched yet (`sync_identity.load`'s `carried`)
        self.unmatched: dict[tuple[str, str], set[str]] = {}

    def passing_over(self, upstream: str, user: str) -> set[str]:
        """The account's messages its syncs leave upstream for now: a message that cannot be
        read whole in time (a slow link, an endless reply) or is over max_message_bytes would
        otherwise be asked first by every sync and fail it again, so no mail listed after it
        would ever arrive. One failure is asked again by the next sync (a link slow once);
        STRIKES of them within PASS_OVER pass the message over until PASS_OVER after the last
        (left upstream, never DELEd, then asked again). In this process's memory: a restart
        asks again at once."""
        failures = self.failures.get((upstream, user))
        if not failures:
            return set()
        now = time.monotonic()
        for uidl in [u for u, (_, until) in failures.items() if until <= now]:
            del failures[uidl]
        return {uidl for uidl, (strikes, _) in failures.items() if strikes >= STRIKES}

    def failed(self, upstream: str, user: str, uidls: set[str]) -> None:
        """`uidls` failed in this sync (`passing_over`)."""
        failures = self.failures.setdefault((upstream, user), {})
        until = time.monotonic() + PASS_OVER
        for uidl in uidls:
            failures[uidl] = (failures[uidl][0] + 1 if uidl in failures else 1, until)

    def resume_at(self, upstream: str, user: str,
                  listing: list[tuple[int, str | None]]) -> list[tuple[int, str | None]]:
        """A server without UIDL (or messages whose UIDL breaks RFC 1939 7, `pop3_listing`):
        every sync reads every such message (keyed by digest), so one whose budget
        (``gateway.limits.sync_budget``) ran out always reached the same message and the mail
        listed after it never arrived. The listing from where the last such sync stopped,
        then its start (each message is still read once per round)."""
        start = self.resume.pop((upstream, user), None)
        if start is None:
            return listing
        at = next((i for i, (number, _) in enumerate(listing) if number >= start), 0)
        return listing[at:] + listing[:at]

    def lock(self, upstream: str, user: str) -> trio.Lock:
        return self._locks.setdefault((upstream, user), trio.Lock())
