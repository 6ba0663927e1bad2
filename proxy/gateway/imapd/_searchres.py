"""SEARCHRES (RFC 5182): `RETURN (SAVE)` keeps a SEARCH or SORT result, `$` names it later.

The result is kept as UIDs on the selected view (`view.saved`), so messages expunged since
simply drop out (RFC 5182 2.1) and a new SELECT starts empty. `$` may stand for a sequence set
in FETCH, STORE, COPY, MOVE, UID EXPUNGE (via `seqs()`) and for a key in SEARCH, SORT and
THREAD (via `substitute()`, which turns it into `UID <set>`).
"""

from __future__ import annotations

from ...imap._tokens import Atom
from ._args import compress, is_atom
from ._view import SelectedView

MARKER = b"$"


def is_saved(arg: object) -> bool:
    return is_atom(arg) and bytes(arg) == MARKER


def _saved(view: SelectedView) -> list[int]:
    return view.messages.shown(view.saved)


def seqs(view: SelectedView) -> list[int]:
    """The saved result as sequence numbers of the view."""
    return view.messages.seqs_of(view.saved)


def substitute(args, view: SelectedView) -> list:
    """Search keys with each `$` replaced by a key matching the saved messages."""
    saved = sorted(_saved(view))
    key = (Atom(b"UID"), Atom(compress(saved))) if saved else (Atom(b"NOT"), Atom(b"ALL"))
    out = []
    for arg in args:
        if is_saved(arg):
            out.append(key)
        elif isinstance(arg, tuple):
            out.append(tuple(substitute(arg, view)))
        else:
            out.append(arg)
    return out


def save(view: SelectedView, uids: list[int]) -> None:
    view.saved = list(uids)
