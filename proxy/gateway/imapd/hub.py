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
  and views ignore anything at or below their own highest UID;
* that snapshot is read before its publication, so a message in it may have been expunged (and
  the expunge published) in between: sessions that never heard of the message would then be
  told of it after its EXPUNGE and keep it for good. While such a snapshot is being read
  (`announce_latest`), the hub remembers expunged UIDs above what it announced
  (`_unannounced_gone`) and leaves them out of the tails; a snapshot read later lacks them anyway,
  so the record is dropped when no snapshot of the mailbox is being read.

\\Recent (RFC 3501 2.3.2) is recent in exactly one session: the first that *applies* the news
(SELECT for what is there, a selected session for what arrives), claimed through the store's
persistent recent floor (`store.recent_floor`), so a second session, a second process or a
restart never sees it recent again. `claim_recent` skips the store call when this process
already knows the UIDs were claimed.

Expunged bodies (RFC 2180 4.1.1): a message expunged elsewhere stays readable by a session until
that session has been sent the EXPUNGE. Each expunge (or `hold`) makes one `Hold`: its UIDs and
the bodies of those some view still shows. Every view that may show them *keeps* the hold
(`SelectedView.keep`: one check, no scan, in the common case), and lets go of it once it shows
none of them any more (it has sent their EXPUNGEs, or left the mailbox). The bodies are found
once per hold (from the first views that show the messages), not once per view: an EXPUNGE of
10,000 messages with a dozen sessions watching costs the expunging session's step one scan.
Bodies no hold keeps are `garbage`, deleted by the next `collect()` (after a command). A view
that has subscribed but not loaded its SELECT snapshot yet keeps every hold but cannot name
bodies (it finds them in its snapshot when it loads); its snapshot may have been read before the
expunge's commit and still show the message. So while a view of the mailbox is loading,
expunged bodies are *deferred*, not garbage, until every view of the mailbox has loaded (and
found what its snapshot shows) or left.

Everything runs in the trio thread of the process; there are no locks. A hub is in-process;
other replicas' changes arrive through the store's change feed (GatewayService.changed, PostgreSQL
LISTEN/NOTIFY), which also shares `pinned()` with them (proxy/store/_pg_bodies.py).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

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
    # FLAGS: uid -> the message with the new flags, made by the first view that applies it
    # and shown by every other (SelectedView._flag_event): one object per change, not per view
    shared: dict[int, MessageMeta] = field(default_factory=dict, compare=False, repr=False)


PRUNE_EVERY = 1000   # published changes to a mailbox between two prunes of its change log


class Hold:
    """The bodies of one expunge's messages, kept while a view that may show them keeps this
    (module docstring). `unresolved`: UIDs whose body no keeping view has shown yet."""

    __slots__ = ("uids", "low", "bodies", "unresolved", "holders")

    def __init__(self, uids: frozenset[int]) -> None:
        self.uids = uids
        self.low = min(uids)
        self.bodies: set[int] = set()
        self.unresolved = set(uids)
        self.holders = 0          # views keeping it


class Listener(Protocol):
    loaded: bool   # False between SELECT's subscription and its snapshot (module docstring)

    def notify(self, event: MailboxEvent) -> None: ...
    def keep(self, hold: Hold) -> bool: ...
    def bodies_of(self, uids: set[int]) -> dict[int, int]: ...


class Hub:
    """Listeners by (account, mailbox); see the module docstring."""

    def __init__(self, change_log_keep: int = 10000) -> None:
        self.change_log_keep = change_log_keep
        self._published: collections.Counter[int] = collections.Counter()   # since last prune
        self._listeners: dict[int, set[Listener]] = {}      # mailbox id -> views
        self._announced: dict[int, int] = {}                 # mailbox id -> highest UID sent
        self._unannounced_gone: dict[int, set[int]] = {}     # mailbox id -> expunged UIDs above
        self._reading: collections.Counter[int] = collections.Counter()   # snapshots being read
        self._recent_floor: dict[int, int] = {}              # mailbox id -> known claimed floor
        self._holds: set[Hold] = set()                       # kept by at least one view
        self._kept: collections.Counter[int] = collections.Counter()   # body id -> live holds
        self._removing: collections.Counter[int] = collections.Counter()   # see `removing`
        self._collecting: collections.Counter[int] = collections.Counter()   # in collects now
        self._withheld: set[int] = set()     # garbage held back while a removal of it is open
        self._collect_ended = trio.Event()                   # set (and renewed) as one ends
        self._deferred: dict[int, set[int]] = {}             # mailbox id -> bodies (loading views)
        self.garbage: set[int] = set()                       # body ids no hold keeps

    def subscribe(self, mailbox_id: int, listener: Listener) -> None:
        self._listeners.setdefault(mailbox_id, set()).add(listener)

    def unsubscribe(self, mailbox_id: int, listener: Listener) -> None:
        listeners = self._listeners.get(mailbox_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[mailbox_id]
        self.loaded(mailbox_id)

    def loaded(self, mailbox_id: int) -> None:
        """A view of `mailbox_id` has loaded its snapshot (and pinned) or left: once none is
        loading, the bodies deferred for them are garbage unless pinned (module docstring)."""
        if mailbox_id in self._deferred and not self._loading(mailbox_id):
            self.orphaned(self._deferred.pop(mailbox_id))

    def _loading(self, mailbox_id: int) -> bool:
        return any(not listener.loaded for listener in self._listeners.get(mailbox_id, ()))

    def listeners(self, mailbox_id: int) -> int:
        return len(self._listeners.get(mailbox_id, ()))

    async def claim_recent(self, store, mailbox_id: int, upto: int) -> int:
        """Claim \\Recent for the UIDs up to `upto` not claimed before; returns the first UID
        this caller got (UIDs from there to `upto` are recent in its session only)."""
        known = self._recent_floor.get(mailbox_id, 0)
        if upto < known:
            return upto + 1
        floor = await store.recent_floor(mailbox_id, claim_upto=upto)
        self._recent_floor[mailbox_id] = max(self._recent_floor.get(mailbox_id, 0), upto + 1)
        return floor

    # ---- bodies of expunged messages ------------------------------------------------------------
    def _hold(self, mailbox_id: int, uids, origin: object | None = None) -> None:
        """Keep the bodies of expunged `uids` for the views that may still show them: each keeps
        one `Hold` (no scan when it shows the first UID tried); the bodies are looked up once,
        from the first keeping views that show the messages (module docstring)."""
        if not uids:
            return
        hold = Hold(frozenset(uids))
        holders = [listener for listener in list(self._listeners.get(mailbox_id, ()))
                   if listener is not origin and listener.keep(hold)]
        if not holders:
            return
        hold.holders = len(holders)
        self._holds.add(hold)
        for listener in holders:
            if not hold.unresolved:
                break
            self.resolve(hold, listener.bodies_of(hold.unresolved))

    def resolve(self, hold: Hold, bodies: dict[int, int]) -> None:
        """A keeping view shows these messages of `hold` (uid -> body id): their bodies stay."""
        if bodies:
            hold.unresolved.difference_update(bodies)
            new = set(bodies.values()).difference(hold.bodies)
            hold.bodies.update(new)
            if hold in self._holds:   # (counted once per hold: `release` uncounts them)
                self._kept.update(new)
            if self.garbage:   # e.g. a copy's body, put there by an expunge of another copy
                self.garbage.difference_update(new)

    def release(self, hold: Hold) -> None:
        """A view no longer shows any message of `hold` (or left): once none keeps it, its
        bodies are garbage unless another hold or a loading view keeps them."""
        hold.holders -= 1
        if hold.holders <= 0 and hold in self._holds:
            self._holds.remove(hold)
            # counted, not the union of every live hold: a quiet session letting go of
            # thousands of one-message holds (a client deleting mail one by one) stays linear
            kept, free = self._kept, []
            for body_id in hold.bodies:
                kept[body_id] -= 1
                if kept[body_id] <= 0:
                    del kept[body_id]
                    free.append(body_id)
            if free:
                self.garbage.update(self._not_deferred(free))

    def _not_deferred(self, body_ids) -> list[int]:
        if not self._deferred:
            return list(body_ids)
        deferred = set().union(*self._deferred.values())
        return [b for b in body_ids if b not in deferred]

    def pinned(self) -> set[int]:
        return set(self._kept).union(*self._deferred.values())

    def hold(self, mailbox_id: int, uids) -> None:
        """Expunged UIDs (this process's own, read back from the store's log by the change
        feed): views that still show them keep their bodies until they send the EXPUNGE. An
        idempotent complement of `expunged`, which may not have been published yet."""
        self._hold(mailbox_id, tuple(uids))

    @contextlib.asynccontextmanager
    async def removing(self, body_ids):
        """Around the store call that removes messages (EXPUNGE, MOVE): their bodies are no
        garbage until it has returned and the removal was published (`expunged` keeps what views
        still show). Garbage may hold a body that a copy still refers to (a hold of another copy
        let go); a `collect` whose delete ran after this removal's commit would delete it while
        sessions still show the copy (RFC 2180 4.1.1). So the two never overlap: from now on a
        collect leaves out what is being removed, and the removal first waits for the collects
        in flight that were given one of its bodies (on SQLite they are queued anyway; on
        PostgreSQL store calls run side by side, and the collect's sweep vouches for this
        process's sessions as of when it began). A collect deletes only the bodies it was
        given (`store.collect_bodies`), so one stuck on a stalled database holds up only the
        removals of those bodies, not every EXPUNGE of the process; and no later collect can
        starve a removal, since none takes its bodies.
        Garbage held back so is *withheld*, not forgotten: when the last removal of a body ends,
        it is garbage again unless a hold now keeps it. Its removal may have failed (a DELETE of
        the source committed first, and put the bodies on the garbage list), and then nothing
        else would ever collect it: on SQLite the body stayed until the next start."""
        ids = list(body_ids)
        self._removing.update(ids)
        self._withhold(ids)
        try:
            while self._collecting and any(body_id in self._collecting for body_id in ids):
                await self._collect_ended.wait()
            yield
        finally:
            _let_go(self._removing, ids)
            if self._withheld:
                self._give_back(ids)

    def _withhold(self, body_ids) -> None:
        taken = self.garbage.intersection(body_ids)
        if taken:
            self.garbage.difference_update(taken)
            self._withheld.update(taken)

    def _give_back(self, body_ids: list[int]) -> None:
        """Withheld bodies no removal holds back any more are garbage again, as `orphaned`."""
        free = [b for b in set(body_ids) if b in self._withheld and b not in self._removing]
        if free:
            self._withheld.difference_update(free)
            self.orphaned(free)

    async def collect(self, store) -> None:
        """Delete the bodies of expunged messages that no session shows any more."""
        if self._removing and self.garbage:
            self._withhold(self._removing)   # `removing`: never in flight
        if not self.garbage:
            return
        ids, self.garbage = sorted(self.garbage), set()
        self._collecting.update(ids)
        try:
            await store.collect_bodies(ids)
        except BaseException:   # e.g. the database restarting: the next collect tries again
            self.garbage.update(ids)
            raise
        finally:
            _let_go(self._collecting, ids)
            self._collect_ended.set()
            self._collect_ended = trio.Event()

    # ---- change-log pruning ------------------------------------------------------------------
    def prune_due(self, mailbox_id: int) -> bool:
        return self._published[mailbox_id] >= PRUNE_EVERY

    async def prune(self, store, index, mailbox_id: int) -> None:
        """Forget change-log rows nobody needs: older than the last `change_log_keep` MODSEQs
        (offline QRESYNC clients), than the MODSEQ any live session of this process loaded its
        view at, and than the mailbox index's snapshot (it refreshes from the log)."""
        self._published.pop(mailbox_id, None)
        bound = await store.highest_modseq(mailbox_id) - self.change_log_keep
        loaded = [getattr(v, "loaded_modseq", bound) for v in self._listeners.get(mailbox_id, ())]
        indexed = index.modseq(mailbox_id)
        bound = min([bound] + loaded + ([indexed] if indexed is not None else []))
        if bound > 1:
            await store.prune_changes(mailbox_id, bound)

    def _send(self, event: MailboxEvent) -> None:
        self._published[event.mailbox_id] += 1
        for listener in list(self._listeners.get(event.mailbox_id, ())):
            if listener is not event.origin:
                listener.notify(event)

    async def announce_latest(self, index, store, mailbox_id: int) -> None:
        """Announce new messages in `mailbox_id` after a commit (one snapshot for all listeners)."""
        with self.reading(mailbox_id):
            snapshot = await index.latest(store, mailbox_id)
            self.appended(mailbox_id, snapshot.metas)

    @contextlib.contextmanager
    def reading(self, mailbox_id: int):
        """While a snapshot of `mailbox_id` to be announced is read, expunges are remembered."""
        self._reading[mailbox_id] += 1
        try:
            yield
        finally:
            self._reading[mailbox_id] -= 1
            if not self._reading[mailbox_id]:
                del self._reading[mailbox_id]
                self._unannounced_gone.pop(mailbox_id, None)

    def appended(self, mailbox_id: int, snapshot: list[MessageMeta]) -> None:
        """Announce new messages, given a `store.messages()` snapshot taken after the commit."""
        floor = self._announced.get(mailbox_id, 0)
        gone = self._unannounced_gone.get(mailbox_id, set())
        tail = tuple(m for m in snapshot if m.uid > floor and m.uid not in gone)
        if snapshot:
            floor = self._announced[mailbox_id] = max(floor, snapshot[-1].uid)
            if gone:   # no later tail reaches down to the floor: forget what is below it
                gone.difference_update([uid for uid in gone if uid <= floor])
                if not gone:
                    del self._unannounced_gone[mailbox_id]
        if not tail:
            return
        self._send(MailboxEvent(mailbox_id, EventKind.APPEND, metas=tail))

    def flags(self, mailbox_id: int, updates, origin: object | None = None) -> None:
        changed = tuple((u.uid, u.flags, u.modseq) for u in updates if u.changed)
        if changed:
            self._send(MailboxEvent(mailbox_id, EventKind.FLAGS, updates=changed, origin=origin))

    def expunged(self, mailbox_id: int, uids, origin: object | None = None,
                 body_ids=()) -> None:
        """Announce expunged UIDs; `body_ids` are their bodies, garbage unless a view still
        shows them (kept by a `Hold` before this returns) or a view is still loading."""
        if uids:
            self._hold(mailbox_id, uids, origin)
            floor = self._announced.get(mailbox_id, 0)
            above = [uid for uid in uids if uid > floor]
            if above and mailbox_id in self._reading:   # that snapshot may hold them
                self._unannounced_gone.setdefault(mailbox_id, set()).update(above)
            self._send(MailboxEvent(mailbox_id, EventKind.EXPUNGE, uids=tuple(uids), origin=origin))
        if body_ids and self._loading(mailbox_id):   # its snapshot may show them (docstring)
            self._deferred.setdefault(mailbox_id, set()).update(body_ids)
        else:
            self.orphaned(body_ids)

    def orphaned(self, body_ids) -> None:
        """Bodies whose messages were removed (expunged, moved, their mailbox deleted): garbage
        unless a hold keeps them (a copy expunged elsewhere that a session still shows) or they
        wait for a loading view."""
        if body_ids:
            kept = self._kept
            self.garbage.update(self._not_deferred([b for b in body_ids if b not in kept]))

    def gone(self, mailbox_id: int, origin: object | None = None) -> None:
        self._announced.pop(mailbox_id, None)
        self._unannounced_gone.pop(mailbox_id, None)
        self._recent_floor.pop(mailbox_id, None)
        self._send(MailboxEvent(mailbox_id, EventKind.GONE, origin=origin))


def _let_go(counts: collections.Counter[int], body_ids: list[int]) -> None:
    """One count fewer for each of `body_ids`; a body counted no more leaves `counts`."""
    counts.subtract(body_ids)
    for body_id in body_ids:
        if counts[body_id] <= 0:
            del counts[body_id]
