"""IDLE (RFC 2177): the session task reads the DONE line while a second task waits on the view's
wakeup event and pushes the updates of other sessions as they are published; nobody polls. An
IDLE longer than `idle_command` is autologged out (3); a client that stops reading ends its session
(`STALLED_CLIENT`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ...imap import events, writer
from ...session.context import CloseSession
from ...session.failures import Close
from ._args import Reply

if TYPE_CHECKING:
    from .session import ImapSession


async def idle(session: "ImapSession", cmd: events.Command) -> None:
    """IDLE until DONE: a second task pushes the updates of other sessions as they come."""
    session.write(writer.continuation(b"idling"))
    await session.flush()
    session.parser.expect_line()
    error: CloseSession | None = None
    event = None
    gauge = session.backend.metrics.gateway_idle_sessions
    gauge.inc()
    try:
        async with trio.open_nursery() as nursery:

            async def push() -> None:   # errors caught here: trio would wrap them in a group
                nonlocal error
                try:
                    await _push(session)
                except CloseSession as exc:
                    error = exc
                    nursery.cancel_scope.cancel()

            nursery.start_soon(push)
            try:
                with trio.move_on_after(session.session.listener.timeouts.idle_command) as timer:
                    event = await session.next_event()
            except CloseSession as exc:
                error = exc
            nursery.cancel_scope.cancel()
    finally:
        gauge.dec()
    if error is not None:
        raise error
    if timer.cancelled_caught:  # RFC 2177 3: an IDLE past idle_command is autologged out
        await session.bye(b"Autologout; idle for too long.", Close.IDLE_TIMEOUT)
    if not isinstance(event, events.RawLine) or event.data.upper() != b"DONE":
        raise Reply.bad("Expected DONE.")


async def _push(session: "ImapSession") -> None:
    """Send the view's updates each time it is woken, until cancelled (DONE) or stalled."""
    # First round without waiting: expunges held back while answering an earlier FETCH,
    # STORE or SEARCH (7.4.1) are already known, and their wakeup was consumed then.
    first = True
    while True:
        view = session.view
        if view is None:
            await trio.sleep_forever()
        if not first:
            await view.wakeup.wait()
        first = False
        # Shielded: once the view has applied an update, its lines must reach the client
        # even if DONE cancels the push half-way (or sequence numbers would disagree); the
        # scope's own deadline still ends a push to a client that stopped reading. (One
        # scope, not shield + move_on_after: this runs once per session per change.)
        deadline = trio.current_time() + STALLED_CLIENT
        with trio.CancelScope(shield=True, deadline=deadline) as bound:
            await session.send_updates(True)
            await session.flush()
        if bound.cancelled_caught:  # a client that stopped reading: end the session
            raise CloseSession(Close.CLIENT_STALLED)


STALLED_CLIENT = 30.0  # seconds an IDLE push may wait for a client that does not read
