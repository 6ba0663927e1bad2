"""SORT, UID SORT (RFC 5256, SORT=DISPLAY RFC 5957, ESORT RFC 5267 with PARTIAL) and THREAD,
UID THREAD (RFC 5256: ORDEREDSUBJECT, REFERENCES) over the selected mailbox.

Theory of operation: the search keys select messages as SEARCH does (`_messages.find`); the
sort fields of each message (sortkeys.py) are stored with its body at ingest or APPEND, read
from the store once and kept per body in `_caches.SortFieldCache`, and the sort or the
threading itself runs in a worker thread, so a large mailbox never holds the event loop. The
answers are cached per process by what they depend on (`_selection`): webmail sorts or threads
the same mailbox again on every page.
"""

from __future__ import annotations

from functools import partial

from ...imap._tokens import Atom
from ..sort import SORT_KEYS, Item, sort_items
from ..thread import ordered_subject, references, render
from ..workers import Workers
from . import _context as context
from . import _searchres as searchres
from ._args import Reply, compress, word
from ._messages import find, is_uid, parse_criteria
from ._names import UTF8_ACCEPT
from ._partial import PartialRange
from ._partial import parse as partial_range

CHUNK = 256            # messages per store call (virtual sizes)
OFF_LOOP_AT = 200      # sorts / threadings of more messages (+ references) run in a thread
_ALGORITHMS = {b"ORDEREDSUBJECT": ordered_subject, b"REFERENCES": references}
_ESORT_OPTIONS = {b"MIN", b"MAX", b"COUNT", b"ALL", b"PARTIAL", b"SAVE",   # SAVE: RFC 5182
                  b"CONTEXT", b"UPDATE"}                                   # RFC 5267 4.2, 4.3


async def items_of(session, seqs: list[int], uid: bool, need_size: bool) -> list[Item]:
    """The selected messages as sortable items (expunged-by-others ones are left out)."""
    view = session.view
    metas = view.messages.metas_at(seqs)
    fields = await session.backend.mime.sort_fields.fields(session.store, metas)
    sizes = [m.size for m in metas]
    if need_size:   # RFC822.SIZE is the virtual size, from the MIME cache
        infos = []
        for start in range(0, len(metas), CHUNK):
            infos += await session.backend.mime.infos(session.store, metas[start:start + CHUNK])
        sizes = [i.size if i is not None else None for i in infos]
    build = partial(_items, seqs, metas, fields, sizes, uid)   # immutable inputs: thread-safe
    workers = session.backend.mime.workers
    return await workers.command(build) if len(seqs) > OFF_LOOP_AT else build()


def _items(seqs, metas, fields, sizes, uid: bool) -> list[Item]:
    return [Item(m.uid if uid else q, q, m.internaldate.timestamp(), size, f)
            for q, m, f, size in zip(seqs, metas, fields, sizes, strict=True)
            if f is not None and size is not None]


async def off_loop(workers: Workers, function, items):
    """`function(items)`, in a worker thread past OFF_LOOP_AT messages or references (a
    THREAD's cost grows with both: one message can carry 100,000 References)."""
    if len(items) > OFF_LOOP_AT or len(items) + sum(len(i.fields.references)
                                                    for i in items) > OFF_LOOP_AT:
        return await workers.command(function, items)
    return function(items)


def _thread_answer(algorithm, items: list[Item]) -> bytes:
    threads = algorithm(items)
    return b"THREAD " + render(threads) if threads else b"THREAD"


def _selection(view, seqs: list[int]) -> tuple:
    """What a SORT or THREAD answer depends on besides its program: which messages, under
    which sequence numbers. A message (mailbox, UID) never changes its body, INTERNALDATE or
    size, the view keeps the bodies it shows (so their sort fields stay readable) and mailbox
    ids are never reused, so equal selections get equal answers (`_caches.AnswerCache`)."""
    return view.mailbox_id, tuple(seqs), tuple(view.messages.uids_at(seqs))


def _charset_and_keys(session, args: list) -> list:
    """`charset search-keys` (mandatory charset, RFC 5256 3) as SEARCH takes them. After ENABLE
    UTF8=ACCEPT a charset other than UTF-8 is BAD (RFC 6855 3, erratum 4029)."""
    if not args:
        raise Reply.bad("Missing charset")
    utf8 = isinstance(args[0], bytes) and bytes(args[0]).upper() == b"UTF-8"
    if UTF8_ACCEPT in session.enabled and not utf8:
        raise Reply.bad("Only UTF-8 is allowed after ENABLE UTF8=ACCEPT")
    return [Atom(b"CHARSET")] + list(args)


# ---- SORT -------------------------------------------------------------------------------------

def _program(criteria) -> list[tuple[str, bool]]:
    if not isinstance(criteria, tuple) or not criteria:
        raise Reply.bad("SORT expects a list of sort criteria")
    program, reverse = [], False
    for value in criteria:
        key = word(value).decode("ascii", "replace")
        if key == "REVERSE":
            reverse = True
            continue
        if key not in SORT_KEYS:
            raise Reply.bad(f"Unknown sort criterion {key[:40]}")
        program.append((key, reverse))
        reverse = False
    if reverse or not program:
        raise Reply.bad("REVERSE must be followed by a sort key")
    return program


EsortOptions = dict[bytes, "bool | PartialRange"]   # RETURN option -> True, or PARTIAL's range


def _return_options(args: list) -> tuple[EsortOptions | None, list]:
    """ESORT RETURN (RFC 5267 3.1): options -> value (PARTIAL's range), and the rest."""
    if not (args and isinstance(args[0], bytes) and bytes(args[0]).upper() == b"RETURN"):
        return None, args
    if len(args) < 2 or not isinstance(args[1], tuple):
        raise Reply.bad("RETURN expects a list of options")
    options: EsortOptions = {}
    items = list(args[1])
    while items:
        option = word(items.pop(0))
        if option not in _ESORT_OPTIONS:
            raise Reply.bad("Unknown RETURN option")
        if option == b"PARTIAL":
            options[option] = partial_range(items.pop(0) if items else b"")
        else:
            options[option] = True
    if b"PARTIAL" in options and b"ALL" in options:   # RFC 5267 4.4: one of PARTIAL, ALL
        raise Reply.bad("PARTIAL conflicts with ALL")
    options.pop(b"CONTEXT", None)   # RFC 5267 4.2: a hint, nothing to do
    return options or {b"ALL": True}, args[2:]   # RFC 4731 3.1: () means ALL


def _saved_part(ordered: list[int], options: EsortOptions) -> list[int]:
    """RFC 5182 2.4: with MIN and/or MAX but neither ALL nor COUNT, only those are saved; with
    PARTIAL (RFC 9394) only its window, as Dovecot does (test_searchres_partial.py)."""
    window = options.get(b"PARTIAL")
    if not ordered or b"ALL" in options or b"COUNT" in options or not (
            b"MIN" in options or b"MAX" in options or isinstance(window, PartialRange)):
        return ordered
    picked = [i for option, i in ((b"MIN", ordered[0]), (b"MAX", ordered[-1])) if option in options]
    return picked + (window.window(ordered) if isinstance(window, PartialRange) else [])


def _esort_reply(cmd, numbers: list[int], options: EsortOptions) -> bytes:
    reply = b'ESEARCH (TAG "%s")' % cmd.tag + (b" UID" if is_uid(cmd) else b"")
    if numbers and b"MIN" in options:    # RFC 5267 3.2: first and last in sort order
        reply += b" MIN %d" % numbers[0]
    if numbers and b"MAX" in options:
        reply += b" MAX %d" % numbers[-1]
    if numbers and b"ALL" in options:
        reply += b" ALL " + compress(numbers)
    window_range = options.get(b"PARTIAL")
    if isinstance(window_range, PartialRange):   # before COUNT, as Dovecot
        window = window_range.window(numbers)
        reply += b" PARTIAL (%s %s)" % (window_range.wire, compress(window) if window else b"NIL")
    if b"COUNT" in options:
        reply += b" COUNT %d" % len(numbers)
    return reply


async def sort(session, cmd):
    options, args = _return_options(list(cmd.args))
    if not args:
        raise Reply.bad("SORT expects sort criteria, a charset and search keys")
    program = _program(args[0])
    view = session.view
    updating = options is not None and b"UPDATE" in options
    if updating:
        context.contexts_of(session).check_tag(cmd.tag)
    keys = searchres.substitute(_charset_and_keys(session, args[1:]), view)
    saving = options is not None and b"SAVE" in options
    if saving:
        searchres.save(view, [])   # RFC 5182 2.1: a failed command leaves $ empty
    key = parse_criteria(session, keys)
    seqs = await find(session, key)
    answers = session.backend.mime.answers
    cache_key = ("SORT", tuple(program), *_selection(view, seqs))
    order = answers.get(cache_key)   # sequence numbers in sort order
    need_size = any(k == "SIZE" for k, _ in program)
    if order is None:
        items = await items_of(session, seqs, False, need_size)
        order = tuple(i.seq for i in await off_loop(session.backend.mime.workers,
                                                    partial(sort_items, program=program), items))
        answers.put(cache_key, order, 24 * len(order))
    refused = None
    if updating:   # RFC 5267 4.3: the result's sort items, to place what enters later
        ordered = await items_of(session, list(order), True, need_size)
        refused = context.open_sort(session, cmd, key, program, ordered, need_size)
    numbers = view.messages.uids_at(order) if is_uid(cmd) else list(order)
    if saving:
        assert options is not None
        searchres.save(view, view.messages.uids_at(_saved_part(list(order), options)))
        options = {k: v for k, v in options.items() if k != b"SAVE"}
        if not options:   # RFC 5182 2.4: SAVE alone returns no ESEARCH
            return None
    if options is None:
        session.emit(b"SORT" + b"".join(b" %d" % n for n in numbers))
    else:
        session.emit(_esort_reply(cmd, numbers, options))
    if refused is not None:   # RFC 5267 4.3.1: the answer stands, without updates
        session.emit(refused)
    return None


# ---- THREAD -----------------------------------------------------------------------------------

async def thread(session, cmd):
    args = list(cmd.args)
    if not args:
        raise Reply.bad("THREAD expects an algorithm, a charset and search keys")
    name = word(args[0])
    algorithm = _ALGORITHMS.get(name)
    if algorithm is None:
        raise Reply.bad("Unknown thread algorithm")
    view = session.view
    key = parse_criteria(session, searchres.substitute(_charset_and_keys(session, args[1:]), view))
    seqs = await find(session, key)
    uid = is_uid(cmd)
    answers = session.backend.mime.answers
    cache_key = ("THREAD", name, uid, *_selection(view, seqs))
    answer = answers.get(cache_key)
    if answer is None:
        items = await items_of(session, seqs, uid, False)
        answer = await off_loop(session.backend.mime.workers,   # render too
                                partial(_thread_answer, algorithm), items)
        answers.put(cache_key, answer, len(answer) + 16 * len(seqs))
    session.emit(answer)
    return None
