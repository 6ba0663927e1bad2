"""Keeping live SEARCH/SORT results current (RFC 5267 4.3; the contexts are in `_context.py`).

Theory of operation: after each command and during IDLE the session calls `refresh` once the
view has sent its EXISTS, EXPUNGE and FETCH lines (4.3.3: an ADDTO naming new messages comes
after their EXISTS). Only the messages that arrived or changed flags since the last refresh are
evaluated, through the same `find` as SEARCH (slices that yield to the event loop, bodies and
texts through the shared caches, HEADER and SENT* keys parsed in a worker thread), and only for
the contexts that can care (a context whose criteria read no flags ignores flag changes).
Each refresh has a budget of its own (`gateway.limits.command_budget`, as one command): a
context whose evaluation runs past it stops with `NO [NOUPDATE "tag"]` instead of holding the
session, and the others carry on. When the store fails (a PostgreSQL restart) the changes are
kept for the next refresh; contexts already told of them find nothing new then.
"""

from __future__ import annotations

from functools import partial

from ...store import StoreError
from ..sort import sort_items
from ._args import Reply
from ._budget import CommandBudget
from ._context import added_line, removed_line
from ._messages import find
from ._sort import items_of, off_loop

MERGE_AT = 64   # SORT: more new members than this are merged by one sort, not inserted one by one


async def refresh(session) -> None:
    """ADDTO/REMOVEFROM for what changed since the last refresh (see the module docstring)."""
    view = session.view
    contexts = view.contexts if view is not None else None
    if contexts is None:
        return
    arrived, flagged = contexts.take_changes()
    if not contexts.live or not (arrived or flagged):
        return
    arrivals = sorted(view.messages.shown(arrived))
    changed = sorted(view.messages.shown(arrived | flagged))
    budget = CommandBudget(session.budget.seconds)
    budget.start()
    for context in list(contexts.live.values()):
        candidates = changed if context.watches_flags else arrivals
        if not candidates:
            continue
        try:
            matched = set(view.messages.uids_at(
                await find(session, context.key, among=candidates, budget=budget)))
            added = [u for u in candidates if u in matched and u not in context.members]
            removed = {u for u in candidates if u in context.members and u not in matched}
            items, merged = [], None
            if context.program is not None and added:
                seqs = [q for u in added if (q := view.seq_of(u)) is not None]
                items = [i._replace(seq=i.number)
                         for i in await items_of(session, seqs, True, context.need_size)]
                if len(items) > MERGE_AT:   # many arrivals at once (a sync): one sort
                    kept = [i for i in context.order if i.seq not in removed]
                    merged = await off_loop(session.backend.mime.workers,
                                            partial(sort_items, program=context.program),
                                            kept + items)
        except Reply:   # past the budget (NO [LIMIT]): this context stops updating
            session.emit(contexts.drop(context))
            continue
        except StoreError:   # e.g. the database restarting: try again after the next command
            contexts.arrived |= arrived
            contexts.flagged |= flagged
            return
        for line in (removed_line(context, view, removed),
                     added_line(context, view, added, items, merged)):
            if line is not None:
                session.emit(line)
