"""Unit tests of the RFC 5267 context building blocks (`_context.py`): sequence numbers pinned to
UIDs, REMOVEFROM/ADDTO positions and sets, the limit. The whole behaviour is checked against
Dovecot and against a client model in test_context.py; these pin the edge cases."""

from __future__ import annotations

import datetime
import types

import pytest

from proxy.gateway.imapd._args import Reply
from proxy.gateway.imapd._budget import CommandBudget
from proxy.gateway.imapd._context import (
    DEFAULT_SEARCH_UPDATES,
    Context,
    Contexts,
    added_line,
    open_search,
    pin,
    removed_line,
)
from proxy.gateway.imapd._context_refresh import refresh
from proxy.gateway.imapd._index import Snapshot
from proxy.gateway.imapd._message_map import MessageMap
from proxy.gateway.imapd._objectid import ObjectIds
from proxy.gateway.imapd._view import SelectedView
from proxy.gateway.imapd.hub import EventKind, MailboxEvent
from proxy.gateway.mime import DEFAULT_LIMITS
from proxy.gateway.search import SearchKey, parse_search
from proxy.gateway.sort import Item, sort_items
from proxy.gateway.sortkeys import extract
from proxy.imap import Atom
from proxy.store import Mailbox, MessageMeta, StoreUnavailable


class View:
    """What the context code reads of a SelectedView: its message map."""

    def __init__(self, uids: list[int]):
        when = datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc)
        self.messages = MessageMap([MessageMeta(u, 1, u, when, 10, frozenset(), 1, u, None)
                                    for u in uids])

    @property
    def exists(self) -> int:
        return len(self.messages)

    def seq_of(self, uid: int) -> int | None:
        return self.messages.seq_of(uid)


def test_pin_turns_sequence_numbers_into_the_uids_they_name_now():
    view = View([3, 5, 8, 9, 12])
    key = parse_search([Atom(b"OR"), Atom(b"2:3"), Atom(b"5:*"), Atom(b"NOT"), Atom(b"1")])
    assert pin(key, view) == SearchKey("AND", (
        SearchKey("OR", (SearchKey("UID", (((5, 8),),)), SearchKey("UID", (((12, 12),),)))),
        SearchKey("NOT", (SearchKey("UID", (((3, 3),),)),))))
    assert pin(parse_search([Atom(b"7:9")]), view) == SearchKey("NOT", (SearchKey("ALL"),))
    assert pin(parse_search([Atom(b"UID"), Atom(b"4:*")]), view) == SearchKey("UID", (((4, None),),))


def test_search_context_lines_use_position_zero_and_mailbox_order():
    view = View([3, 5, 8, 9, 12])
    seqs = Context(b"t1", SearchKey("ALL"), False, {3, 8, 9})
    assert removed_line(seqs, view, {9, 3}) == b'ESEARCH (TAG "t1") REMOVEFROM (0 1,4)'
    assert seqs.members == {8}
    assert added_line(seqs, view, [12, 5], []) == b'ESEARCH (TAG "t1") ADDTO (0 2,5)'
    uids = Context(b"t2", SearchKey("ALL"), True, {3, 5})
    assert removed_line(uids, view, set()) is None
    assert added_line(uids, view, [8, 9], []) == b'ESEARCH (TAG "t2") UID ADDTO (0 8:9)'


def _item(uid: int, subject: str) -> Item:
    raw = f"Subject: {subject}\r\n\r\n".encode()
    return Item(uid, uid, 1000.0, 10, extract(raw))


@pytest.mark.parametrize("program", [[("SUBJECT", False)], [("SUBJECT", True)]])
def test_sort_context_positions_follow_rfc_5267(program):
    view = View([1, 2, 3, 4, 5, 6, 7])
    subjects = {1: "b", 2: "d", 3: "b", 4: "f", 5: "a", 6: "c", 7: "e"}
    start = sort_items([_item(u, subjects[u]) for u in (1, 2, 3, 4)], program)
    context = Context(b"s", SearchKey("ALL"), True, {1, 2, 3, 4}, program, start)
    client = [i.seq for i in start]
    line = added_line(context, view, [5, 6, 7], [_item(u, subjects[u]) for u in (5, 6, 7)])
    _apply(client, line)
    assert client == [i.seq for i in sort_items([_item(u, s) for u, s in subjects.items()],
                                                program)]
    line = removed_line(context, view, {1, 6, 3})
    _apply(client, line)
    assert client == [i.seq for i in context.order] and {1, 3, 6}.isdisjoint(client)


def _apply(client: list[int], line: bytes) -> None:
    kind, _, payload = line.partition(b"UID ")[2].partition(b" (")
    words = payload.rstrip(b")").split()
    for position, numbers in zip(words[::2], words[1::2], strict=True):
        values = []
        for part in numbers.split(b","):
            low, _, high = part.partition(b":")
            values += range(int(low), int(high or low) + 1)
        p = int(position) - 1
        if kind == b"ADDTO":
            client[p:p] = values
        else:
            assert client[p:p + len(values)] == values
            del client[p:p + len(values)]


def test_the_limit_and_tag_reuse():
    contexts = Contexts(limit=1)
    assert contexts.open(Context(b"a", SearchKey("ALL"), True, set())) is None
    with pytest.raises(Reply) as reuse:
        contexts.check_tag(b"a")
    assert reuse.value.status == b"BAD"
    assert contexts.open(Context(b"b", SearchKey("ALL"), True, set())) == \
        b'NO [NOUPDATE "b"] Too many contexts'
    assert contexts.cancel(b"a") and not contexts.cancel(b"a")
    assert contexts.open(Context(b"b", SearchKey("ALL"), True, set())) is None


# ---- refresh: what changed, evaluated once the store answers --------------------------------------

class FlakyTexts:
    """The MIME cache's `texts` (what BODY searches read) for a store that is down at first."""

    def __init__(self) -> None:
        self.down = True
        self.limits = DEFAULT_LIMITS

    async def texts(self, store, metas):
        if self.down:
            raise StoreUnavailable("the database is restarting")
        return [("", "NEEDLE" if m.uid % 2 else "HAY") for m in metas]   # casemapped


def _meta(uid: int) -> MessageMeta:
    when = datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc)
    return MessageMeta(uid, 1, uid, when, 100, frozenset(), uid, uid, None)


async def test_refresh_keeps_the_changes_while_the_store_is_down():
    view = SelectedView(Mailbox(1, 1, "INBOX", None, 7, 3, 1, 2), [], False, set())
    view.load(Snapshot(1, 2, [_meta(1), _meta(2)]))
    lines: list[bytes] = []
    mime = FlakyTexts()
    session = types.SimpleNamespace(view=view, budget=CommandBudget(60.0), store=None,
                                    backend=types.SimpleNamespace(
                                        mime=mime, object_ids=ObjectIds(b"k" * 16)),
                                    emit=lines.append,
                                    search_updates=DEFAULT_SEARCH_UPDATES)
    key = parse_search([Atom(b"BODY"), b"needle"])
    assert open_search(session, types.SimpleNamespace(tag=b"t", name=b"UID SEARCH"), key, []) \
        is None
    view.notify(MailboxEvent(1, EventKind.APPEND, metas=(_meta(3), _meta(4), _meta(5))))
    view.updates(True)
    await refresh(session)   # the store is down: nothing sent, nothing lost
    assert lines == [] and view.contexts.arrived == {3, 4, 5}
    mime.down = False
    await refresh(session)
    assert lines == [b'ESEARCH (TAG "t") UID ADDTO (0 3,5)']
    await refresh(session)
    assert len(lines) == 1
