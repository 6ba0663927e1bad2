"""The gateway's side of a stress run's trace (MAILPROXY_STRESS_TRACE=DIR, in-process gateways
only): what the hub published to which views, what each view loaded at SELECT and what each of
its updates sent (part by part), which view served which command tag (the tester's tags name
its session: `s4t527` is session 4) and how each session ended. Lines carry
`time.monotonic()` stamps, as the tester's own traces do, so the two can be merged by time to
find an interleaving.

It wraps a few methods of `Hub`, `SelectedView` and `ImapSession` for the duration of a test
(pytest's monkeypatch); the gateway's code has no tracing of its own.
"""

from __future__ import annotations

import collections
import time

from proxy.gateway.imapd import _view, hub, session

TRACE_LINES = 60000   # the gateway's last events kept (all sessions together)


def _short(uids) -> str:
    uids = list(uids)
    return str(uids if len(uids) <= 12 else uids[:6] + ["..."] + uids[-6:])


def _event(event: hub.MailboxEvent) -> str:
    if event.kind is hub.EventKind.APPEND:
        return f"append {_short(m.uid for m in event.metas)}"
    if event.kind is hub.EventKind.FLAGS:
        return "flags " + " ".join(f"{uid}:{modseq}:{','.join(sorted(flags)) or '-'}"
                                   for uid, flags, modseq in event.updates[:12])
    if event.kind is hub.EventKind.EXPUNGE:
        return f"expunge {_short(event.uids)}"
    return "gone"


class ServerTrace:
    """Installs the wrappers (`install`); `lines()` are the events kept, oldest first."""

    def __init__(self) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=TRACE_LINES)

    def note(self, text: str) -> None:
        self._lines.append(b"%.3f %s" % (time.monotonic(), text.encode()))

    def lines(self) -> list[bytes]:
        while True:   # read from the tester's threads while the gateway's thread appends
            try:
                return list(self._lines)
            except RuntimeError:
                continue

    def install(self, monkeypatch) -> None:
        note = self.note
        send, load = hub.Hub._send, _view.SelectedView.load
        updates = _view.SelectedView.update_slices
        execute, close = session.ImapSession._execute, _view.SelectedView.close

        def traced_send(self, event):
            views = [id(v) for v in self._listeners.get(event.mailbox_id, ())
                     if v is not event.origin]
            note(f"hub mb={event.mailbox_id} {_event(event)} origin={id(event.origin)} "
                 f"to={views}")
            return send(self, event)

        def traced_load(self, snapshot):
            note(f"view={id(self)} load mb={self.mailbox_id} modseq={snapshot.modseq} "
                 f"n={len(snapshot.uids)} uids={_short(snapshot.uids)} "
                 f"pending={[_event(e) for e in self.pending]} holds={len(self.holds)}")
            return load(self, snapshot)

        def traced_updates(self, allow_expunge, recent=None):
            pending = [_event(e) for e in self.pending]
            for n, lines in enumerate(updates(self, allow_expunge, recent)):
                note(f"view={id(self)} updates part={n} allow_expunge={allow_expunge} "
                     f"pending={pending} sent={[line[:80] for line in lines]} "
                     f"exists={self.exists} held={_short(self.expunged)}")
                pending = []
                yield lines

        def traced_close(self):
            note(f"view={id(self)} close mb={self.mailbox_id} n={self.exists}")
            return close(self)

        async def traced_execute(self, cmd):
            note(f"cmd {cmd.tag.decode('ascii', 'replace')} {cmd.name.decode('ascii', 'replace')}"
                 f" view={id(self.view) if self.view is not None else None}")
            try:
                return await execute(self, cmd)
            finally:
                note(f"done {cmd.tag.decode('ascii', 'replace')} "
                     f"view={id(self.view) if self.view is not None else None}")

        run = session.ImapSession.run

        async def traced_run(self):   # how each session ended (a reason, or what escaped)
            try:
                unauthenticated = await run(self)
            except BaseException as exc:
                note(f"session end raised {exc!r}")
                raise
            note(f"session end reason={getattr(self.session, 'close_reason', None)} "
                 f"unauthenticated={unauthenticated}")
            return unauthenticated

        monkeypatch.setattr(session.ImapSession, "run", traced_run)
        monkeypatch.setattr(hub.Hub, "_send", traced_send)
        monkeypatch.setattr(_view.SelectedView, "load", traced_load)
        monkeypatch.setattr(_view.SelectedView, "update_slices", traced_updates)
        monkeypatch.setattr(_view.SelectedView, "close", traced_close)
        monkeypatch.setattr(session.ImapSession, "_execute", traced_execute)
