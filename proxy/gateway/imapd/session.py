"""One authenticated IMAP session over the store: the read loop, dispatch, replies, IDLE.

Theory of operation
-------------------
The loop is a sequence of named steps: `_next_command` (parser events; `+` for synchronizing
literals) -> `_check_state` (the command table's `states`) -> `_dispatch` (the handler) ->
`_finish` (pending changes of other sessions as untagged responses, then the tagged reply).
Handlers write untagged responses with `emit()` into one output buffer, which is flushed at the
end of the command (and whenever it grows large), so a FETCH of many messages is few writes.

Handlers end a command early by raising `Reply` (NO/BAD with a response code). StoreError from
the store becomes NO; any other exception is a bug: it is logged with its traceback, the client
gets `* BYE` and the connection is closed (no internals are sent).

IDLE (RFC 2177) is in `_idle.py`: it reads the DONE line with `next_event` while a second task
sends the view's updates (`send_updates`) as they are published; nobody polls.

Drain (SIGTERM): a watcher task cancels a read that waits for the next command; a command in
progress completes, then `* BYE` is sent (DESIGN.md, Operations).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import trio

from ... import logs
from ...imap import NEED_DATA, CommandParser, Limits, ProtocolError, events, writer
from ...metrics import Metrics, command_label
from ...net.conn import Conn
from ...session.channel import Channel
from ...session.context import CloseSession, Session
from ...session.failures import Close
from ...store import (
    Account,
    MailboxExists,
    MailboxNotFound,
    Store,
    StoreError,
    StoreFailure,
    StoreKeyError,
    StoreUnavailable,
)
from ..numbers import MAX_SET_RANGES
from ._args import Reply
from ._budget import DEFAULT_COMMAND_BUDGET, CommandBudget
from ._context import DEFAULT_SEARCH_UPDATES
from ._context_refresh import refresh as refresh_contexts
from ._index import MailboxIndex
from ._names import utf8_enabled
from ._objectid import ObjectIds
from ._state import SELECTED, State, Trigger, next_state
from .commands import COMMANDS

if TYPE_CHECKING:
    from ._caches import MimeCache
    from ._view import SelectedView
    from .hub import Hub

FLUSH_AT = 256 * 1024     # queued bytes that trigger a write during a long response
BIG_PIECE = 64 * 1024     # pieces this big are written on their own, not copied


class Backend:
    """What every session of one account shares: the store, the account's hub, the MIME cache
    (shared by all accounts), the account's mailbox index, and the metrics."""

    def __init__(self, store: Store, hub: "Hub", mime: "MimeCache", metrics: Metrics):
        self.store, self.hub, self.mime, self.metrics = store, hub, mime, metrics
        self.index = MailboxIndex()
        self.object_ids = ObjectIds(store.objectid_key)   # RFC 8474


class ImapSession:
    """The authenticated part of one connection. `run()` returns when the session ends."""

    def __init__(self, session: Session, conn: Conn, backend: Backend, account: Account,
                 unconsumed: bytes = b""):
        self.session, self.conn, self.backend = session, conn, backend
        self.store = backend.store
        self.account = account
        limits = session.listener.limits
        # LITERAL+ is advertised, so non-synchronizing literals get the full limit (RFC 7888 4).
        self.parser = CommandParser(
            Limits(max_line=limits.max_line, max_literal=limits.max_literal,
                   max_nonsync_literal=limits.max_literal, max_depth=limits.max_depth,
                   max_id_line=limits.id_line_length),
            collect_literals=True, parse_args=True)
        self.channel = Channel(conn, self.parser, NEED_DATA, unconsumed)
        self.state = State.AUTHENTICATED
        self.view: SelectedView | None = None
        self.enabled: set[bytes] = set()
        self.out: list[bytes] = []      # pieces to write; big bodies stay separate pieces
        self.out_size = 0
        self.draining = False
        self._read_scope: trio.CancelScope | None = None
        self.after_reply: Callable[[], None] | None = None   # run once the tagged reply is out
        self.bye_after_reply: bytes | None = None   # BYE text once the tagged OK is out (DELETE)
        gateway = getattr(getattr(session.runtime, "config", None), "gateway", None)
        self.budget = CommandBudget(gateway.limits.command_budget if gateway is not None
                                    else DEFAULT_COMMAND_BUDGET)
        self.max_set_ranges = gateway.limits.sequence_set_ranges if gateway is not None \
            else MAX_SET_RANGES
        self.quota = gateway.quota if gateway is not None else None   # RFC 9208 (_quota.py)
        self.search_updates = gateway.limits.search_updates if gateway is not None \
            else DEFAULT_SEARCH_UPDATES   # RFC 5267 4.3.1 (_context.py)
        # absolute imap:// URLs naming this server (RFC 5092; `_catenate.py`), user names' case
        self.url_hosts = frozenset(h.lower() for h in gateway.url_hosts) if gateway else frozenset()
        self.user_case = gateway.user_case if gateway is not None else "lower"

    # ---- output -----------------------------------------------------------------------------
    def emit(self, line: bytes) -> None:
        """Queue an untagged response (`line` without "* " and CRLF; may hold literals)."""
        self.write(b"* " + line + b"\r\n")

    def write(self, data: bytes) -> None:
        """Queue raw protocol bytes."""
        self.out.append(data)
        self.out_size += len(data)

    def write_pieces(self, pieces: list[bytes]) -> None:
        self.out += pieces
        self.out_size += sum(map(len, pieces))

    async def flush(self) -> None:
        """Write what is queued: small pieces joined, big ones (bodies) sent without a copy."""
        if not self.out:
            return
        out, self.out, self.out_size = self.out, [], 0
        batch: list[bytes] = []
        size = 0
        for piece in out:
            if len(piece) >= BIG_PIECE:
                if batch:
                    await self._send(b"".join(batch))
                    batch, size = [], 0
                await self._send(piece)
                continue
            batch.append(piece)
            size += len(piece)
            if size >= FLUSH_AT:
                await self._send(b"".join(batch))
                batch, size = [], 0
        if batch:
            await self._send(b"".join(batch) if len(batch) > 1 else batch[0])

    async def _send(self, data: bytes) -> None:
        if not await self.conn.send(data):
            raise CloseSession(Close.CLIENT_CLOSED)

    async def maybe_flush(self) -> None:
        if self.out_size >= FLUSH_AT:
            await self.flush()

    @property
    def utf8(self) -> bool:
        """Mailbox names in UTF-8 (RFC 6855 3, RFC 9051 5.1) rather than modified UTF-7."""
        return utf8_enabled(self.enabled)

    def transition(self, trigger: Trigger) -> None:
        self.state = next_state(self.state, trigger)

    # ---- the loop ---------------------------------------------------------------------------
    async def run(self) -> bool:
        """Serve commands until LOGOUT, EOF, timeout, drain or UNAUTHENTICATE. Never raises for
        client input. True when the client unauthenticated (RFC 8437): the connection goes back
        to the pre-login dialogue, with what it pipelined (`take_unconsumed()`)."""
        error: CloseSession | None = None
        drain = self.session.runtime.drain
        drain.subscribe(self._on_drain)   # the process-wide drain calls back: no task here
        try:
            while self.state is not State.NOT_AUTHENTICATED:
                with trio.move_on_after(self.session.listener.timeouts.idle) as timer:
                    cmd = await self._next_command()
                if timer.cancelled_caught:  # RFC 3501 5.4
                    await self.bye(b"Autologout; idle for too long.", Close.IDLE_TIMEOUT)
                await self._execute(cmd)
                if self.draining:
                    await self.bye(b"Server shutting down.", Close.SHUTDOWN)
        except CloseSession as exc:
            error = exc
        finally:
            drain.unsubscribe(self._on_drain)
            self.deselect()
        if error is not None:
            self.session.end(error.reason)
        return error is None

    def take_unconsumed(self) -> bytes:
        """What the client sent after its last command, for the next reader of the connection."""
        return self.parser.take_unconsumed()

    def _on_drain(self) -> None:
        """The process drains (SIGTERM): BYE at once while waiting for input (a command or an
        IDLE's DONE), else after the command in flight."""
        self.draining = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def bye(self, text: bytes, reason: Close) -> None:
        self.emit(b"BYE " + text)
        await self.conn.send(b"".join(self.out))
        self.out, self.out_size = [], 0
        raise CloseSession(reason)

    async def next_event(self) -> object:
        """The next parser event; answers protocol errors itself. Raises CloseSession (also on
        drain). The caller's cancel scope bounds the wait (`idle`, `idle_command`)."""
        while True:
            if self.draining:
                await self.bye(b"Server shutting down.", Close.SHUTDOWN)
            with trio.CancelScope() as drained:  # cancelled by _on_drain
                self._read_scope = drained
                try:
                    event = await self.channel.next_event()
                except ProtocolError as exc:
                    await self.flush()
                    await self.conn.send(exc.reply())
                    if exc.fatal:
                        await self.bye(b"Protocol error.", Close.PROTOCOL_ERROR)
                    continue
                finally:
                    self._read_scope = None
            if drained.cancelled_caught:
                await self.bye(b"Server shutting down.", Close.SHUTDOWN)
            if isinstance(event, events.ConnectionClosed):
                raise CloseSession(Close.CLIENT_CLOSED)
            return event

    async def _next_command(self) -> events.Command:
        while True:
            event = await self.next_event()
            if isinstance(event, events.LiteralStart):
                if event.synchronizing:
                    await self.conn.send(writer.continuation(b"Ready for literal data"))
            elif isinstance(event, events.Command):
                return event

    # ---- one command ------------------------------------------------------------------------
    async def _execute(self, cmd: events.Command) -> None:
        self.session.commands += 1
        started = time.monotonic()
        self.budget.start()
        spec = COMMANDS.get(cmd.name)
        status, code, text = b"OK", None, cmd.name.decode("ascii", "replace") + " completed."
        try:
            if spec is None:
                raise Reply.bad("Unknown command.")
            if self.state not in spec.states:   # RFC 3501 6: command not valid in this state
                raise Reply.bad(f"Command not valid in the {self.state.value} state.")
            result = await spec.handler(self, cmd)
            if result is not None:
                code, text = result
        except Reply as reply:
            status, code, text = reply.status, reply.code, reply.text
        except MailboxNotFound:   # e.g. deleted by another process, its GONE not here yet:
            # a fixed text (the store's names an internal row id)
            status, code, text = b"NO", b"NONEXISTENT", "Mailbox does not exist."
        except MailboxExists as exc:
            status, code, text = b"NO", b"ALREADYEXISTS", str(exc)
        except StoreUnavailable as exc:   # e.g. the database restarting: RFC 5530 UNAVAILABLE
            status, code, text = b"NO", b"UNAVAILABLE", "Store unavailable, try again later."
            logs.event("gateway_store_unavailable", logging.WARNING, **self.session.log_fields(),
                       error=logs.sanitize(str(exc)))
        except (StoreFailure, StoreKeyError) as exc:
            status, code, text = b"NO", b"SERVERBUG", "Internal store error."
            logs.event("gateway_store_error", logging.WARNING, **self.session.log_fields(),
                       error=logs.sanitize(str(exc)))
        except StoreError as exc:  # a refusal whose text is meant for the user (RFC 5530)
            status, code, text = b"NO", b"CANNOT", str(exc)
        except (CloseSession, trio.Cancelled):
            raise
        except Exception:   # a bug: log it, tell the client nothing about it, close
            logs.event("gateway_internal_error", logging.ERROR, exc_info=True,
                       **self.session.log_fields(), command=cmd.name.decode("ascii", "replace"))
            await self.bye(b"Internal server error.", Close.INTERNAL_ERROR)
        if self.state is SELECTED and self.view is not None:
            await self.send_updates(spec.expunge_ok if spec is not None else False)
        self.write(writer.tagged(cmd.tag, status, _safe(text), code))
        await self.flush()
        if self.after_reply is not None:   # e.g. COMPRESS: the stream changes after its OK
            switch, self.after_reply = self.after_reply, None
            if status == b"OK":
                switch()
        await self._housekeeping()
        self._count(cmd.name, status, started)
        if self.state is State.LOGOUT:
            raise CloseSession(Close.CLIENT_LOGOUT)
        if self.bye_after_reply is not None:
            await self.bye(self.bye_after_reply, Close.MAILBOX_DELETED)

    async def _housekeeping(self) -> None:
        """After the reply: delete bodies no session shows any more, prune the change log. A
        store error here is not the command's: logged, tried again after a later command."""
        hub = self.backend.hub
        try:
            if hub.garbage:
                await hub.collect(self.store)
            if self.view is not None and hub.prune_due(self.view.mailbox_id):
                await hub.prune(self.store, self.backend.index, self.view.mailbox_id)
        except StoreError as exc:
            logs.event("gateway_store_housekeeping_failed", logging.WARNING,
                       **self.session.log_fields(), error=logs.sanitize(str(exc)))

    async def send_updates(self, allow_expunge: bool) -> None:
        view = self.view
        if view is None:
            return
        if view.pending or (allow_expunge and view.expunged):
            await self._send_view_updates(view, allow_expunge)
        await refresh_contexts(self)   # RFC 5267 4.3: ADDTO/REMOVEFROM after EXISTS and FETCH

    async def _send_view_updates(self, view: "SelectedView", allow_expunge: bool) -> None:
        top, recent = view.new_top(), None
        if top and not view.read_only and not view.rev2:   # \Recent for one session (3501 2.3.2)
            try:
                recent = (await self.backend.hub.claim_recent(self.store, view.mailbox_id, top),
                          top)
            except MailboxNotFound:   # deleted since the messages arrived: BYE below (GONE)
                pass                  # or at the next command, once its event is published
            except StoreError as exc:   # e.g. the database restarting: shown without \Recent
                logs.event("gateway_store_unavailable", logging.WARNING,
                           **self.session.log_fields(), error=logs.sanitize(str(exc)))
        for part in view.update_slices(allow_expunge, recent):   # 10,000 changes: in slices
            for line in part:
                self.emit(line)
            await self.budget.share()
        _observe_latency(self.backend.metrics, view)
        if view.gone:   # our mailbox was deleted or renamed by another session
            # Dovecot's words and behaviour (checked with 2.3.19, maildir): BYE, no tagged reply
            await self.bye(b"IMAP session state is inconsistent, please relogin.",
                            Close.MAILBOX_DELETED)

    def _count(self, name: bytes, status: bytes, started: float) -> None:
        metrics = self.session.runtime.metrics
        label = command_label("imap", name)
        metrics.commands.labels("imap", label, status.decode()).inc()
        metrics.command_duration.labels("imap", label).observe(time.monotonic() - started)

    # ---- selection --------------------------------------------------------------------------
    def select(self, view: "SelectedView") -> None:
        self.deselect()
        self.view = view
        self.backend.hub.subscribe(view.mailbox_id, view)

    def deselect(self) -> None:
        if self.view is not None:
            self.backend.hub.unsubscribe(self.view.mailbox_id, self.view)
            self.view.close()
            self.view = None


def _observe_latency(metrics: Metrics, view: "SelectedView") -> None:
    now = time.monotonic()
    for published in view.latencies:
        metrics.gateway_propagation_seconds.observe(now - published)
    view.latencies.clear()


def _safe(text: str) -> bytes:
    return logs.sanitize(text, 300).encode("ascii")
