"""The per-account notification hub: how one session's change reaches the others.

Theory of operation
-------------------
Every IMAP session that has a mailbox selected subscribes a *listener* (its `SelectedView`) for
that mailbox. Whoever changes the store (a session's STORE/EXPUNGE/APPEND/COPY/MOVE, the POP3
fetcher after an ingest) publishes one `MailboxEvent` right after the store call returned, i.e.
after the commit. `publish` is synchronous: it only appends the event to each listener's queue
and wakes it (an IDLE session sends at once; others at their next command, RFC 3501 5.2/7.4.1).
Sessions never poll the store.

Ordering. Two publishers may commit in one order and publish in the other. So:

* flag events carry the MODSEQ of each update; a view ignores one older than what it has;
* new messages are published as the *tail* of a fresh `store.messages()` snapshot. UIDs are
  assigned in commit order, so a snapshot holding UID n holds every older surviving message;
  the hub forwards only the part above the highest UID it already announced for the mailbox,
  and views ignore anything at or below their own highest UID.

\\Recent (RFC 3501 2.3.2) is session state: a message announced while some session has the
mailbox selected is recent in those sessions; one that arrives while nobody has it selected is
kept "unclaimed" here until the next SELECT takes it (EXAMINE only looks).

Everything runs in the trio thread of the process; there are no locks. A hub is in-process:
a second replica of the gateway would need the store's own notification (PostgreSQL NOTIFY).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

from ...store import MessageMeta


class EventKind(enum.Enum):
    APPEND = "append"      # metas: new messages, ascending UID
    FLAGS = "flags"        # updates: (uid, flags, modseq)
    EXPUNGE = "expunge"    # uids
    GONE = "gone"          # the mailbox was deleted


@dataclass(frozen=True, slots=True)
class MailboxEvent:
    mailbox_id: int
    kind: EventKind
    metas: tuple[MessageMeta, ...] = ()
    updates: tuple[tuple[int, frozenset[str], int], ...] = ()
    uids: tuple[int, ...] = ()
    origin: object | None = None        # the session that made the change (it is not notified)
    published: float = field(default_factory=time.monotonic)


class Listener(Protocol):
    def notify(self, event: MailboxEvent) -> None: ...


class Hub:
    """Listeners by (account, mailbox); see the module docstring."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[Listener]] = {}      # mailbox id -> views
        self._announced: dict[int, int] = {}                 # mailbox id -> highest UID sent
        self._unclaimed: dict[int, set[int]] = {}            # mailbox id -> recent UIDs

    def subscribe(self, mailbox_id: int, listener: Listener) -> None:
        self._listeners.setdefault(mailbox_id, set()).add(listener)

    def unsubscribe(self, mailbox_id: int, listener: Listener) -> None:
        listeners = self._listeners.get(mailbox_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[mailbox_id]

    def listeners(self, mailbox_id: int) -> int:
        return len(self._listeners.get(mailbox_id, ()))

    def claim_recent(self, mailbox_id: int, *, take: bool) -> set[int]:
        """UIDs recent for a session selecting the mailbox; SELECT takes them, EXAMINE peeks."""
        if take:
            return self._unclaimed.pop(mailbox_id, set())
        return set(self._unclaimed.get(mailbox_id, ()))

    def _send(self, event: MailboxEvent) -> None:
        for listener in list(self._listeners.get(event.mailbox_id, ())):
            if listener is not event.origin:
                listener.notify(event)

    def appended(self, mailbox_id: int, snapshot: list[MessageMeta]) -> None:
        """Announce new messages, given a `store.messages()` snapshot taken after the commit."""
        floor = self._announced.get(mailbox_id, 0)
        tail = tuple(m for m in snapshot if m.uid > floor)
        if snapshot:
            self._announced[mailbox_id] = max(floor, snapshot[-1].uid)
        if not tail:
            return
        if not self._listeners.get(mailbox_id):
            self._unclaimed.setdefault(mailbox_id, set()).update(m.uid for m in tail)
        self._send(MailboxEvent(mailbox_id, EventKind.APPEND, metas=tail))

    def flags(self, mailbox_id: int, updates, origin: object | None = None) -> None:
        changed = tuple((u.uid, u.flags, u.modseq) for u in updates if u.changed)
        if changed:
            self._send(MailboxEvent(mailbox_id, EventKind.FLAGS, updates=changed, origin=origin))

    def expunged(self, mailbox_id: int, uids, origin: object | None = None) -> None:
        if uids:
            unclaimed = self._unclaimed.get(mailbox_id)
            if unclaimed:
                unclaimed.difference_update(uids)
            self._send(MailboxEvent(mailbox_id, EventKind.EXPUNGE, uids=tuple(uids), origin=origin))

    def gone(self, mailbox_id: int, origin: object | None = None) -> None:
        self._unclaimed.pop(mailbox_id, None)
        self._announced.pop(mailbox_id, None)
        self._send(MailboxEvent(mailbox_id, EventKind.GONE, origin=origin))
