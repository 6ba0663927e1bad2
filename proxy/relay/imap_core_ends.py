"""How an IMAP relay session ends by the proxy's own words: the half of ImapRelayCore
(imap_core.py) that writes lines the upstream never sent and decides the session's end.

- the end itself (`finish`: the reason, once);
- the proxy's own lines, placed only where they cannot split a forwarded response
  (`last_words`, `_reply_between`);
- a LOGOUT answered by the proxy (`answer_logout`, RFC 3501 6.1.3);
- timers (RFC 3501 5.4 autologout, an IDLE past its bound, a silent upstream) and the drain's
  BYE at the first rest.

CoreEnds declares the slots it assigns; the rest are ImapRelayCore's (annotated below for the
type checker only).
"""

from __future__ import annotations

from ..imap import CommandParser, ResponseParser
from ..session.context import Session
from ..session.failures import Close
from .held_lines import HeldLines
from .imap_compress import CompressAsked
from .imap_inflight import InFlight

__all__ = ["CoreEnds"]


class CoreEnds:
    __slots__ = ("end", "logout_tag", "logged_out", "upstream_heard", "draining")   # set here
    end: Close | None
    logout_tag: bytes | None
    logged_out: bool
    upstream_heard: float
    draining: bool
    session: Session
    client_parser: CommandParser
    upstream_parser: ResponseParser
    held: HeldLines
    inflight: InFlight
    last_active: float
    compress: CompressAsked | None
    compressed: bool
    replies: list[bytes]
    _said: list[bytes]
    _before: list[bytes | bytearray]

    def finish(self, reason: Close) -> None:
        if self.end is None:
            self.end = reason
            self.session.end(reason)

    # -- the proxy's own lines ------------------------------------------------------------
    def last_words(self, line: bytes) -> None:
        """An untagged line of the proxy's own before closing, only where it cannot land in
        the middle of a forwarded response (otherwise the connection just closes)."""
        if self.upstream_parser.at_boundary:
            self.replies.append(line)

    def _reply_between(self, line: bytes) -> None:
        """A reply of the proxy's own: now if the upstream's stream is between responses,
        else queued until the next boundary."""
        if not self._said and self.upstream_parser.at_boundary:
            self.replies.append(line)
        else:
            self._said.append(line)

    # -- LOGOUT ---------------------------------------------------------------------------
    def answer_logout(self, written: bool) -> bool:
        """Called by the driver after forwarding a client chunk that started a LOGOUT with no
        other command in flight (`logout_tag`), `written` when all of it went to the kernel.
        When it is still the only command owed an answer, the last of the chunk (nothing held
        or half-read after it), not in COMPRESS (the proxy's lines would need the deflate
        stream) and the upstream's stream is between responses (nothing half-forwarded), the
        proxy answers it itself, as RFC 3501 6.1.3 says the server does: BYE, then the tagged
        OK; the session ends (client_logout) and the command is counted as answered OK. The
        upstream still got the LOGOUT: the driver discards its answer and closes it without
        the client waiting (engine_logout.py). What the upstream would have said before its
        BYE (untagged EXISTS, EXPUNGE, FETCH FLAGS, an ALERT) is not relayed: the client is
        leaving the mailbox, no command of its own is owed those, and its next session reads
        the mailbox's state afresh (SELECT's responses, CONDSTORE/QRESYNC). True when
        answered; otherwise the upstream's answer is relayed as for any command."""
        tag, self.logout_tag = self.logout_tag, None
        inflight = self.inflight
        if (tag is None or not written or self.end is not None or self.compressed
                or self.compress is not None or len(inflight.pending) != 1
                or tag not in inflight.pending or self.held.held or self._said or self._before
                or not self.client_parser.at_boundary or not self.upstream_parser.at_boundary):
            return False
        inflight.complete(tag, b"OK")
        self.replies.append(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
        self.logged_out = True
        self.finish(Close.CLIENT_LOGOUT)
        return True

    # -- timers and drain -----------------------------------------------------------------
    def due(self) -> float:
        """When the nearest timer could fire (the driver's clock)."""
        timeouts = self.session.listener.timeouts
        idle_at = self.last_active + (
            timeouts.idle_command if self.inflight.idle_tag else timeouts.idle)
        return min(idle_at, self.upstream_heard + timeouts.upstream_response)

    def timer(self, now: float) -> None:
        """Act on whatever timer expired at `now`; activity since only pushed them back."""
        timeouts = self.session.listener.timeouts
        idle_at = self.last_active + (
            timeouts.idle_command if self.inflight.idle_tag else timeouts.idle)
        if now >= idle_at:
            self.last_words(b"* BYE Autologout; idle for too long.\r\n")
            self.finish(Close.IDLE_TIMEOUT)
        elif now >= self.upstream_heard + timeouts.upstream_response:
            if self.inflight.owed():
                self.session.runtime.metrics.limit_hits.labels("upstream_response").inc()
                self.last_words(b"* BYE Upstream server not responding.\r\n")
                self.finish(Close.UPSTREAM_TIMEOUT)
            else:
                self.upstream_heard = now   # nothing owed: nothing to wait for

    def drained(self) -> None:
        """The process drains (SIGTERM): BYE after the current command."""
        self.draining = True
        self._bye_if_at_rest()

    def _bye_if_at_rest(self) -> None:
        """BYE as soon as no command is in flight (an IDLE does not count) and the upstream's
        stream is between responses, so the BYE never splits one."""
        if self.end is not None or self.inflight.owed() or not self.upstream_parser.at_boundary:
            return
        self.replies.append(b"* BYE Server shutting down.\r\n")
        self.finish(Close.SHUTDOWN)
