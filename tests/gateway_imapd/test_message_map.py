"""MessageMap alone (`_message_map.py`): the sequence number <-> UID <-> meta map every view keeps.
Each operation is checked against a plain list model under a seeded random mix, and the
sequence-set operations against hostile sets (huge, reversed, `*`, many overlapping ranges),
whose cost must follow the map's size, never the numbers the client wrote."""

from __future__ import annotations

import datetime
import random
import tracemalloc

import pytest

from proxy.gateway.imapd._args import parse_sequence_set, resolve
from proxy.gateway.imapd._message_map import MessageMap, merged
from proxy.imap import Atom
from proxy.store import MessageMeta

WHEN = datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc)
UID_MAX = 4294967295   # RFC 3501 9: nz-number


def _meta(uid: int, modseq: int = 1, flags: frozenset[str] = frozenset()) -> MessageMeta:
    return MessageMeta(uid, 1, uid, WHEN, 100, flags, modseq, uid, None)


def _map(uids) -> MessageMap:
    return MessageMap([_meta(u) for u in uids])


def test_lookups_both_ways():
    messages = _map([3, 5, 8, 9, 12])
    assert len(messages) == 5 and messages.max_uid == 12 and list(messages) == [3, 5, 8, 9, 12]
    assert [messages.seq_of(u) for u in (2, 3, 8, 10, 12, 13)] == [None, 1, 3, None, 5, None]
    assert messages.uid_at(4) == 9 and messages.meta_at(2).uid == 5
    assert 8 in messages and 7 not in messages and "8" not in messages
    assert messages.get(7) is None and messages.meta_of(12).uid == 12
    with pytest.raises(KeyError):
        messages.meta_of(7)
    for seq in (0, -1, 6):   # never a wrap-around to the end (list[-1])
        with pytest.raises(IndexError):
            messages.uid_at(seq)
        with pytest.raises(IndexError):
            messages.meta_at(seq)
    assert [(q, u) for q, u, _ in messages.items()] == [(1, 3), (2, 5), (3, 8), (4, 9), (5, 12)]
    empty = MessageMap()
    assert len(empty) == 0 and not empty and empty.max_uid == 0 and empty.seq_of(1) is None


def test_uids_above_32_bits_are_refused():
    with pytest.raises(OverflowError):
        MessageMap([_meta(UID_MAX + 1)])


def test_append_keeps_uids_ascending():
    messages = _map([1, 4])
    messages.append(_meta(9))
    assert list(messages) == [1, 4, 9] and messages.seq_of(9) == 3
    for uid in (9, 2):
        with pytest.raises(ValueError):
            messages.append(_meta(uid))
    assert list(messages) == [1, 4, 9]


def test_replace_at_checks_the_uid():
    messages = _map([1, 4])
    messages.replace_at(2, _meta(4, 7, frozenset({"\\Seen"})))
    assert messages.meta_of(4).modseq == 7
    with pytest.raises(ValueError):
        messages.replace_at(1, _meta(4, 8))
    assert messages.meta_of(1).modseq == 1


def test_copy_is_independent():
    original = _map([1, 2, 3])
    copy = original.copy()
    copy.remove(2)
    copy.append(_meta(7))
    copy.replace_at(1, _meta(1, 5))
    assert list(original) == [1, 2, 3] and original.meta_of(1).modseq == 1
    assert list(copy) == [1, 3, 7]


def test_remove_many_numbers_like_expunge_responses():
    """Highest first, each number as the client counts once the higher ones are gone (RFC 3501
    7.4.1): the numbers the messages had before, since none below them moved."""
    messages = _map(range(1, 11))
    assert messages.remove_many([9, 2, 42, 5, 5, 10, 7, 3]) == [
        (10, 10), (9, 9), (7, 7), (5, 5), (3, 3), (2, 2)]
    assert list(messages) == [1, 4, 6, 8]
    assert [m.uid for m in messages.metas()] == [1, 4, 6, 8]
    assert messages.remove_many([11]) == [] and messages.remove_many([4]) == [(4, 2)]
    assert list(messages) == [1, 6, 8] and messages.seq_of(8) == 3


@pytest.mark.parametrize("gone", [range(1, 600, 3), range(400, 1001, 2), range(200, 700)])
def test_remove_many_cut_in_place_or_rebuilt(gone):
    """Many runs low in the map (the map rebuilt in one pass), runs high in it or one long run
    (cut out in place): the same answer."""
    messages = _map(range(1, 1001))
    assert messages.remove_many(gone) == [(u, u) for u in reversed(gone)]
    model = [u for u in range(1, 1001) if u not in set(gone)]
    assert list(messages) == model and [m.uid for m in messages.metas()] == model
    assert [messages.seq_of(u) for u in model] == list(range(1, len(model) + 1))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_a_list_model(seed):
    """Random appends, removals (one and many), flag changes and lookups against a list."""
    rng = random.Random(seed)
    model = sorted(rng.sample(range(1, 400), 120))
    messages = _map(model)
    metas = {u: _meta(u) for u in model}
    top = model[-1]
    for step in range(600):
        action = rng.random()
        if action < 0.2:
            top += rng.randint(1, 5)
            model.append(top)
            metas[top] = _meta(top)
            messages.append(metas[top])
        elif action < 0.3 and model:
            uid = rng.choice(model + [top + 1])
            expected = model.index(uid) + 1 if uid in model else None
            assert messages.remove(uid) == expected
            if expected is not None:
                model.remove(uid)
        elif action < 0.4:
            gone = rng.sample(range(1, top + 2), rng.randint(0, 40))
            shown = sorted({u for u in gone if u in model}, reverse=True)
            assert messages.remove_many(gone) == [(u, model.index(u) + 1) for u in shown]
            model = [u for u in model if u not in shown]
        elif action < 0.5 and model:
            seq = rng.randint(1, len(model))
            metas[model[seq - 1]] = _meta(model[seq - 1], step + 2)
            messages.replace_at(seq, metas[model[seq - 1]])
        uid = rng.randint(0, top + 2)
        assert messages.seq_of(uid) == (model.index(uid) + 1 if uid in model else None)
        assert (uid in messages) == (uid in model)
        probe = set(rng.sample(range(1, top + 2), rng.randint(1, 30)))
        assert [m.uid for m in messages.shown_metas(probe)] == sorted(probe & set(model))
        assert messages.shows_any(probe) == bool(probe & set(model))
        assert messages.shown(sorted(probe)) == sorted(probe & set(model))
        assert messages.seqs_of(probe) == [model.index(u) + 1 for u in sorted(probe & set(model))]
    assert list(messages) == model and len(messages) == len(model)
    assert messages.metas() == [metas[u] for u in model]


def test_shown_metas_and_shows_any_on_sparse_and_dense_sets():
    """Both ways of finding them: a few UIDs far apart (binary searches), many close together
    (one pass over the map's UIDs between them)."""
    messages = _map(range(1, 1001))
    assert [m.uid for m in messages.shown_metas({2, 999, 5000})] == [2, 999]
    assert [m.uid for m in messages.shown_metas(set(range(500, 1300)))] == list(range(500, 1001))
    assert messages.shows_any({1001, 5000}) is False and messages.shows_any({7, 5000}) is True
    assert messages.shows_any(set(range(1001, 1500))) is False
    assert messages.shown_metas(set()) == [] and MessageMap().shows_any({1}) is False


def test_missing_lists_the_gaps_inside_the_ranges():
    messages = _map([3, 4, 8, 10])
    assert messages.missing([(1, 12)]) == [(1, 2), (5, 7), (9, 9), (11, 12)]
    assert messages.missing([(3, 4), (8, 8)]) == []
    assert messages.missing([(4, 9)]) == [(5, 7), (9, 9)]
    assert MessageMap().missing([(1, 3)]) == [(1, 3)]


# ---- sequence sets -------------------------------------------------------------------------

def _seqs(messages: MessageMap, text: bytes) -> list[int]:
    return messages.seqs_in(resolve(parse_sequence_set(Atom(text)), len(messages)))


def _uid_seqs(messages: MessageMap, text: bytes) -> list[int]:
    return messages.seqs_in_uid_ranges(resolve(parse_sequence_set(Atom(text)), messages.max_uid))


def test_sequence_sets_in_any_order_each_message_once():
    messages = _map([3, 5, 8, 9, 12])
    assert _seqs(messages, b"1:*") == [1, 2, 3, 4, 5]
    assert _seqs(messages, b"*:4") == [4, 5] and _seqs(messages, b"*") == [5]
    assert _seqs(messages, b"4:2,1,2:3,5:5") == [1, 2, 3, 4, 5]
    assert messages.seqs_in([(4, 2), (9, 7), (0, 1)]) == [1, 2, 3, 4]   # reversed; clamped
    assert messages.seqs_in([]) == [] and MessageMap().seqs_in([(1, 5)]) == []


def test_uid_sets_in_any_order_each_message_once():
    messages = _map([3, 5, 8, 9, 12])
    assert _uid_seqs(messages, b"1:*") == [1, 2, 3, 4, 5]
    assert _uid_seqs(messages, b"*") == [5] and _uid_seqs(messages, b"12:9") == [4, 5]
    assert _uid_seqs(messages, b"4,6:7,10:11") == []          # only gaps
    assert _uid_seqs(messages, b"9:5,8,1:3") == [1, 2, 3, 4]
    assert messages.seqs_in_uid_ranges([(20, 13)]) == []      # all above the last UID
    # RFC 3501 6.4.8: "*" of a UID set is the highest UID; 13:* is 12:13, so it names UID 12
    assert _uid_seqs(messages, b"13:*") == [5]
    assert MessageMap().seqs_in_uid_ranges([(1, UID_MAX)]) == []


def test_merged_ranges():
    assert merged([(5, 3), (1, 1), (2, 2), (9, 12), (11, 10), (20, 30)], 1, 25) == [
        (1, 5), (9, 12), (20, 25)]
    assert merged([(7, 9)], 1, 5) == [] and merged([(0, 0)], 1, 5) == []


def test_hostile_sets_cost_what_the_map_holds():
    """`1:4294967295`, many copies of it, reversed, and thousands of overlapping ranges: what
    comes back, and every byte allocated on the way, is bounded by the map's size and the
    number of ranges; a loop over the client's numbers would allocate gigabytes."""
    messages = _map(range(1, 2001))
    hostile = [(1, UID_MAX), (UID_MAX, 1)] * 500 + [(n, n + 7) for n in range(1, 4000, 3)]
    tracemalloc.start()
    try:
        by_seq = messages.seqs_in(hostile)
        by_uid = messages.seqs_in_uid_ranges(hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert by_seq == by_uid == list(range(1, 2001))
    # the two results (2,000 numbers each) and the sorted ranges: well under 1 MB
    assert peak < 1_000_000, peak
    # the parser's own bound stays in front of them (RFC 3501 9; numbers.MAX_SET_RANGES)
    assert _seqs(messages, b"4294967295:1,*:1,1:*") == list(range(1, 2001))


def test_the_last_position_found_is_only_a_hint():
    """Lookups try the neighbours of the last UID found first; after removals and appends a
    stale position must never answer for another UID."""
    messages = _map([1, 2, 3, 4, 5])
    assert [messages.seq_of(u) for u in (1, 2, 3, 4, 5)] == [1, 2, 3, 4, 5]   # ascending
    assert [messages.seq_of(u) for u in (5, 4, 3, 2, 1)] == [5, 4, 3, 2, 1]   # descending
    assert messages.seq_of(5) == 5
    assert messages.remove_many([3, 4, 5]) == [(5, 5), (4, 4), (3, 3)]
    assert [messages.seq_of(u) for u in (5, 4, 3, 2, 1, 2)] == [None, None, None, 2, 1, 2]
    messages.append(_meta(9))
    assert messages.seq_of(9) == 3 and messages.seq_of(2) == 2 and messages.seq_of(9) == 3
    assert messages.remove(1) == 1 and messages.seq_of(2) == 1 and messages.seq_of(9) == 2
