"""The gateway's IMAP4rev1 server over the `proxy.store` message store.

Modules: `session` (read loop, dispatch, IDLE), `commands` (the command table and capabilities),
`_state` (states and transitions), `_mailboxes` (authenticated-state commands), `_messages`
(FETCH, SEARCH), `_message_changes` (STORE, COPY, MOVE, EXPUNGE, CLOSE), `_fetch` (FETCH
items and rendering), `_caches` (MIME/body/search-text/sort-field caches), `_index` (shared
mailbox snapshots), `_view` (a session's picture of its selected mailbox), `hub` (change
notification between sessions), `utf7` (mailbox names), `_args` (argument decoding).
"""

from ._caches import BodyCache, MimeCache
from .commands import CAPABILITIES
from .hub import Hub
from .session import Backend, ImapSession

__all__ = ["CAPABILITIES", "Backend", "BodyCache", "Hub", "ImapSession", "MimeCache"]
