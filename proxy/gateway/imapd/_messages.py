"""Selected-state commands that read messages: FETCH (RFC 3501 6.4.5) and SEARCH (6.4.4;
ESEARCH RFC 4731), plus what every selected-state handler shares (`targets`, `is_uid`,
`writable`). The commands that change messages are in `_message_changes.py`.

Every handler acts on the session's `SelectedView` (sequence numbers as the client knows them)
and on the store by UID. Expunges by others are never announced inside FETCH, STORE or SEARCH
(the command table says so, `expunge_ok=False`); this module never emits another session's
changes itself. FETCH reads in chunks, the next chunk loading while the current one is written
(`pipelined`); a FETCH of a body sets \\Seen first (6.4.5) and publishes that on the hub.
"""

from __future__ import annotations

import types

import trio

from ...store import FlagMode
from ..search import SearchError, SearchKey, key_ops, matches, parse_search
from . import _binary, _preview
from . import _condstore as cs
from . import _context as context
from . import _searchres as searchres
from ._args import Reply, compress, is_atom, parse_sequence_set, resolve, word
from ._fetch import Item, parse_items, plan, render
from ._names import IMAP4REV2, UTF8_ACCEPT
from ._partial import PartialRange
from ._partial import parse as partial_range

_RAW_KEYS = {"HEADER", "SENTBEFORE", "SENTON", "SENTSINCE"}   # need the parsed message
_TEXT_KEYS = {"BODY", "TEXT"}                                 # need the cached search texts
CHUNK_MESSAGES = 256
CHUNK_BYTES = 8 * 1024 * 1024
_ESEARCH_OPTIONS = {b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE",   # SAVE: RFC 5182
                    b"PARTIAL",                                   # RFC 5267 4.4, RFC 9394
                    b"CONTEXT", b"UPDATE"}                        # RFC 5267 4.2, 4.3


def is_uid(cmd) -> bool:
    return cmd.name.startswith(b"UID ")


def targets(session, arg, uid: bool) -> list[int]:
    """Sequence numbers named by a sequence set (uid=False) or a UID set (RFC 3501 6.4.8)."""
    view = session.view
    if searchres.is_saved(arg):   # RFC 5182 2.1: the saved result, whatever the command
        return searchres.seqs(view)
    ranges = parse_sequence_set(arg, session.max_set_ranges)
    if uid:
        return view.messages.seqs_in_uid_ranges(resolve(ranges, view.max_uid))
    resolved = resolve(ranges, view.exists)
    if any(lo < 1 or hi > view.exists for lo, hi in resolved):   # Dovecot: BAD, as here
        raise Reply.bad("Invalid messageset: no such message")
    return view.messages.seqs_in(resolved)


def writable(session) -> None:
    if session.view.read_only:
        raise Reply.no("Mailbox is read-only.", b"READ-ONLY")


# ---- FETCH -------------------------------------------------------------------------------------

async def fetch(session, cmd):
    if len(cmd.args) not in (2, 3):
        raise Reply.bad("FETCH expects a sequence set, items and optional modifiers")
    uid = is_uid(cmd)
    changedsince, vanished = cs.fetch_modifiers(session, cmd, uid)
    seqs = targets(session, cmd.args[0], uid)
    items = parse_items(cmd.args[1], uid=uid, rev2=IMAP4REV2 in session.enabled)
    view = session.view
    if changedsince is not None or any(i.name == b"MODSEQ" for i in items):
        await cs.enable_condstore(session)
    if changedsince is not None:   # RFC 7162 3.1.4: only messages changed since, with MODSEQ
        if not any(i.name == b"MODSEQ" for i in items):
            items = items + [Item(b"MODSEQ")]
        seqs = [q for q in seqs if view.messages.meta_at(q).modseq > changedsince]
        if vanished:   # 3.2.6: VANISHED (EARLIER) before the FETCH responses
            await cs.vanished_earlier(session, view, cmd.args[0], changedsince)
    seen_now: set[int] = set()
    if not view.read_only and any(not i.peek for i in items):   # 6.4.5: BODY[] sets \Seen
        unseen = [meta.uid for meta in view.messages.metas_at(seqs)
                  if "\\Seen" not in meta.flags and meta.uid not in view.expunged]
        if unseen:
            result = await session.store.store_flags(view.mailbox_id, unseen, ["\\Seen"], FlagMode.ADD)
            for update in result.updated:
                view.set_flags(update.uid, update.flags, update.modseq)
                seen_now.add(update.uid)
            session.backend.hub.flags(view.mailbox_id, result.updated, origin=view)
            for line in view.announce(u.flags for u in result.updated):   # 7.2.6: others' keywords
                session.emit(line)
    with_flags = items if any(i.name == b"FLAGS" for i in items) else items + [Item(b"FLAGS")]
    if view.condstore and not any(i.name == b"MODSEQ" for i in with_flags):   # 3.1.4
        with_flags = with_flags + [Item(b"MODSEQ")]
    if view.condstore and not any(i.name == b"UID" for i in with_flags):   # 3.1: UID too
        with_flags = with_flags + [Item(b"UID")]
    needs_mime, needs_body = plan(items)
    mime, store = session.backend.mime, session.store
    binary_sections = _binary.wanted(items)
    wants_preview = any(i.name == b"PREVIEW" for i in items)

    async def load(chunk):
        metas = view.messages.metas_at(chunk)
        infos = await mime.infos(store, metas) if needs_mime else [None] * len(metas)
        if needs_body:
            raws = await mime.bodies.get_many(store, metas)
            if not needs_mime:   # virtual size == raw size: no bare LF (whole-body fast path)
                infos = [mime.peek(m) for m in metas]
        else:
            raws = [None] * len(metas)
        binaries = await _binary.decode_chunk(binary_sections, infos, raws, mime.workers,
                                              max_header_bytes=mime.limits.max_header_bytes)
        previews = await _preview.previews(mime, metas, infos, raws, wants_preview)
        return chunk, metas, infos, raws, binaries, previews

    missing = False

    async def write(loaded):
        nonlocal missing
        chunk, metas, infos, raws, binaries, previews = loaded
        for n, seq in enumerate(chunk):
            meta, info, raw = metas[n], infos[n], raws[n]
            if (needs_mime and info is None) or (needs_body and raw is None):
                missing = True   # expunged by another session, not yet announced (RFC 2180 4.1.3)
                continue
            session.write_pieces(render(seq, meta, with_flags if meta.uid in seen_now else items,
                                        view.flags_of(meta), info, raw, binaries[n], previews[n],
                                        ids=session.backend.object_ids,
                                        max_header_bytes=mime.limits.max_header_bytes))
            await session.budget.tick()
        await session.maybe_flush()

    await pipelined(load, write, list(_chunks(view, seqs)))
    if missing:
        raise Reply.no("Some messages were expunged by another session.", b"EXPUNGEISSUED")


async def pipelined(load, consume, chunks) -> None:
    """`await consume(await load(chunk))` for each chunk in order, the next chunk's load running
    while the current one is consumed (the store reads while we write). Errors are re-raised
    bare, never as an ExceptionGroup (trio's strict groups would wrap them)."""
    if not chunks:
        return
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            pending = _Pending(nursery, load, chunks[0])
            for n in range(len(chunks)):
                result = await pending.result()
                if n + 1 < len(chunks):
                    pending = _Pending(nursery, load, chunks[n + 1])
                await consume(result)
        except BaseException as exc:   # re-raised bare below
            error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


class _Pending:
    def __init__(self, nursery, load, chunk):
        self.done = trio.Event()
        self.value = self.error = None
        nursery.start_soon(self._run, load, chunk)

    async def _run(self, load, chunk):
        try:
            self.value = await load(chunk)
        except Exception as exc:   # handed to the consumer, raised there
            self.error = exc
        finally:
            self.done.set()

    async def result(self):
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


def _chunks(view, seqs: list[int]):
    """Sequence numbers in chunks of at most CHUNK_MESSAGES messages / CHUNK_BYTES bytes: one
    store call per chunk, and the previous chunk is written out before the next is read."""
    chunk, size = [], 0
    for seq in seqs:
        chunk.append(seq)
        size += view.messages.meta_at(seq).size
        if len(chunk) >= CHUNK_MESSAGES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# ---- SEARCH ------------------------------------------------------------------------------------

def _search_args(cmd) -> tuple[set[bytes] | None, PartialRange | None, list]:
    """(ESEARCH return options or None, PARTIAL's range or None, the search keys)."""
    args = list(cmd.args)
    if args and isinstance(args[0], bytes) and bytes(args[0]).upper() == b"RETURN":
        if len(args) < 2 or not isinstance(args[1], tuple):
            raise Reply.bad("RETURN expects a list of options")
        items, options, window = list(args[1]), set(), None
        while items:
            option = word(items.pop(0))
            if option == b"PARTIAL":   # RFC 5267 4.4, RFC 9394 3.1: a range follows
                window = partial_range(items.pop(0) if items else b"")
            options.add(option)
        if not options <= _ESEARCH_OPTIONS:
            raise Reply.bad("Unknown RETURN option")
        if window is not None and b"ALL" in options:   # RFC 5267 4.4: one of PARTIAL, ALL
            raise Reply.bad("PARTIAL conflicts with ALL")
        options.discard(b"CONTEXT")   # RFC 5267 4.2: a hint, nothing to do
        return options or {b"ALL"}, window, args[2:]   # RFC 4731 3.1: () means ALL
    return None, None, args


def parse_criteria(session, args: list) -> SearchKey:
    """Search keys as SEARCH, SORT and THREAD take them; SearchError -> NO/BAD."""
    try:
        return parse_search(args, rev2=IMAP4REV2 in session.enabled)
    except SearchError as exc:
        code = exc.code.encode() if exc.code else None
        raise (Reply.no(exc.text, code) if code else Reply.bad(exc.text)) from None


async def find(session, key: SearchKey, among: list[int] | None = None,
               budget=None) -> list[int]:
    """Sequence numbers of the selected messages matching `key` (of the UIDs `among` only, when
    given), in order, in slices that tick `budget` (default: the command's)."""
    ops = key_ops(key)
    view = session.view
    budget = budget or session.budget
    seqs = list(range(1, view.exists + 1)) if among is None else view.messages.seqs_of(among)
    if key.op == "ALL":   # SORT/THREAD/SEARCH ALL: nothing to evaluate
        return seqs
    if "MODSEQ" in ops:
        await cs.enable_condstore(session)
    mime, store = session.backend.mime, session.store
    need_raw, need_text = bool(ops & _RAW_KEYS), bool(ops & _TEXT_KEYS)
    need_size = bool(ops & {"LARGER", "SMALLER"})
    ids = session.backend.object_ids if "EMAILID" in ops else None   # RFC 8474 6
    found = []
    for start in range(0, len(seqs), CHUNK_MESSAGES):
        part = seqs[start:start + CHUNK_MESSAGES]
        metas = view.messages.metas_at(part)
        raws = await mime.bodies.get_many(store, metas) if need_raw else None
        texts = await mime.texts(store, metas) if need_text else None
        infos = await mime.infos(store, metas) if need_size else None
        msgs = []
        for n, meta in enumerate(metas):
            raw = raws[n] if raws is not None else None
            text = texts[n] if texts is not None else None
            info = infos[n] if infos is not None else None
            if (need_raw and raw is None) or (need_text and text is None) or (
                    need_size and info is None):
                continue   # not in the store (its body pin was lost): cannot match
            msgs.append(types.SimpleNamespace(
                seq=part[n], uid=meta.uid, flags=view.flags_of(meta),
                internaldate=meta.internaldate, modseq=meta.modseq, saved=meta.saved,
                emailid=ids.email(meta.body_id) if ids is not None else None,
                size=info.size if info is not None else meta.size, raw=raw, texts=text,
                max_header_bytes=mime.limits.max_header_bytes))
        if need_raw:   # HEADER, SENT*: each message parsed; off the event loop (DESIGN.md)
            found += await mime.workers.command(_match, key, msgs, view.exists, view.max_uid)
            await budget.tick()
            continue
        for msg in msgs:   # in slices that yield; NO [LIMIT] past the budget (_budget.py)
            if matches(key, msg, last_seq=view.exists, last_uid=view.max_uid):
                found.append(msg.seq)
            await budget.tick()
    return found


def _match(key: SearchKey, msgs: list, last_seq: int, last_uid: int) -> list[int]:
    """Sequence numbers of `msgs` matching `key` (pure: runs in a worker thread too)."""
    return [m.seq for m in msgs if matches(key, m, last_seq=last_seq, last_uid=last_uid)]


async def search(session, cmd):
    options, window, args = _search_args(cmd)
    if UTF8_ACCEPT in session.enabled and args and is_atom(args[0]) \
            and bytes(args[0]).upper() == b"CHARSET":   # RFC 6855 3: strings are UTF-8 now
        raise Reply.bad("CHARSET is not allowed after ENABLE UTF8=ACCEPT")
    if options is None and IMAP4REV2 in session.enabled:
        options = {b"ALL"}   # RFC 9051 6.4.4: the answer is always ESEARCH, ALL by default
    view = session.view
    updating = options is not None and b"UPDATE" in options
    if updating:
        context.contexts_of(session).check_tag(cmd.tag)
    args = searchres.substitute(args, view)   # $ is the result saved before this command
    if options is not None and b"SAVE" in options:
        searchres.save(view, [])   # RFC 5182 2.1: a failed SEARCH leaves $ empty
    key = parse_criteria(session, args)
    ops = key_ops(key)
    found = await find(session, key)
    refused = context.open_search(session, cmd, key, found) if updating else None
    if options is not None and b"SAVE" in options:
        searchres.save(view, view.messages.uids_at(_saved_part(found, options, window)))
        options = options - {b"SAVE"}
        if not options:   # 2.4: SAVE alone returns no ESEARCH
            return None
    if is_uid(cmd):
        found = view.messages.uids_at(found)
    top = _result_modseq(view, found, options, is_uid(cmd), window) if "MODSEQ" in ops else None
    if options is None:
        session.emit(b"SEARCH" + b"".join(b" %d" % n for n in found) +
                     (b" (MODSEQ %d)" % top if top is not None else b""))
        return None
    reply = b'ESEARCH (TAG "%s")' % cmd.tag + (b" UID" if is_uid(cmd) else b"")
    if found and b"MIN" in options:
        reply += b" MIN %d" % min(found)
    if found and b"MAX" in options:
        reply += b" MAX %d" % max(found)
    if window is not None:   # RFC 9394 3.1: positions in the ascending result (Dovecot's place)
        part = window.window(sorted(found))
        reply += b" PARTIAL (%s %s)" % (window.wire, compress(part) if part else b"NIL")
    if b"COUNT" in options:
        reply += b" COUNT %d" % len(found)
    if found and b"ALL" in options:
        reply += b" ALL " + compress(sorted(found))
    if top is not None:
        reply += b" MODSEQ %d" % top
    session.emit(reply)
    if refused is not None:   # RFC 5267 4.3.1: the answer stands, without updates
        session.emit(refused)
    return None


def _saved_part(found: list[int], options: set[bytes],
                window: PartialRange | None = None) -> list[int]:
    """RFC 5182 2.4: with MIN and/or MAX but neither ALL nor COUNT, only those are saved; with
    PARTIAL (RFC 9394) only the messages of its window, as Dovecot does
    (tests/gateway_imapd/test_searchres_partial.py)."""
    if not found or options & {b"ALL", b"COUNT"} or not (options & {b"MIN", b"MAX"} or window):
        return found
    picked = {n for option, n in ((b"MIN", found[0]), (b"MAX", found[-1])) if option in options}
    return sorted(picked.union(window.window(found) if window else ()))


def _result_modseq(view, found: list[int], options: set[bytes] | None, uid: bool,
                   window: PartialRange | None = None) -> int | None:
    """RFC 7162 3.1.5: with MODSEQ in the criteria, the highest MODSEQ of the matches; RFC 4731
    3.2 / RFC 7162 3.1.5: with only RETURN (MIN), (MAX) and/or (PARTIAL), of the message(s)
    returned."""
    if not found:
        return None
    returned = found
    if options is not None and not options & {b"ALL", b"COUNT"}:
        returned = [n for option, n in ((b"MIN", min(found)), (b"MAX", max(found)))
                    if option in options] + (window.window(sorted(found)) if window else [])
    if not returned:   # a PARTIAL window past the end: no message returned, no MODSEQ
        return None
    messages = view.messages
    return max((messages.meta_of(n) if uid else messages.meta_at(n)).modseq for n in returned)
