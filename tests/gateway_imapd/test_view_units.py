"""SelectedView alone: a flag change published before the message it changes is announced (the
hub's APPEND snapshot was read before the change committed) must not be lost."""

from __future__ import annotations

import datetime

from proxy.gateway.imapd._index import Snapshot
from proxy.gateway.imapd._view import SelectedView
from proxy.gateway.imapd.hub import EventKind, MailboxEvent
from proxy.store import Mailbox, MessageMeta

SEEN = frozenset({"\\Seen"})


def _meta(uid: int, modseq: int, flags: frozenset[str] = frozenset()) -> MessageMeta:
    when = datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc)
    return MessageMeta(uid, 1, uid, when, 100, flags, modseq, uid, None)


def _view() -> SelectedView:
    view = SelectedView(Mailbox(1, 1, "INBOX", None, 7, 3, 1, 2), [], False, set())
    view.load(Snapshot(1, 2, [_meta(1, 1), _meta(2, 2)]))
    return view


def test_flag_change_before_the_stale_append_snapshot_wins():
    view = _view()
    view.notify(MailboxEvent(1, EventKind.FLAGS, updates=((3, SEEN, 9),)))
    assert view.updates(True) == []   # nothing to tell yet: UID 3 is not announced
    view.notify(MailboxEvent(1, EventKind.APPEND, metas=(_meta(3, 5),)))   # read at MODSEQ 5
    assert view.updates(True) == [b"3 EXISTS", b"0 RECENT"]
    assert view.meta[3].flags == SEEN and view.meta[3].modseq == 9
    assert view.fetch_flags_line(3, 3) == b"3 FETCH (UID 3 FLAGS (\\Seen))"
    assert view.early_flags == {}


def test_same_batch_and_older_change_and_expunge():
    view = _view()
    view.notify(MailboxEvent(1, EventKind.FLAGS, updates=((3, SEEN, 9), (4, SEEN, 3))))
    view.notify(MailboxEvent(1, EventKind.FLAGS, updates=((5, SEEN, 9),)))
    view.notify(MailboxEvent(1, EventKind.EXPUNGE, uids=(5,)))
    view.notify(MailboxEvent(1, EventKind.APPEND, metas=(_meta(3, 5), _meta(4, 6))))
    view.updates(True)
    assert view.meta[3].flags == SEEN   # newer change applied
    assert view.meta[4].flags == frozenset() and view.meta[4].modseq == 6   # older one ignored
    assert view.uids == [1, 2, 3, 4] and view.early_flags == {}
